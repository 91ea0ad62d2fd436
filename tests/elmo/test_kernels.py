"""elmo.kernels: the GEMM library chosen once, CPU-only prepared kernels, and the weights prepared
for inference (reused while the weights stay, dropped when they may change)."""

import copy
import pickle

import pytest
import torch

from conftest import make_tiny_config
from elmo import ElmoBiLM, batch_to_ids
from elmo import kernels
from elmo.kernels import GEMMS, LstmKernels, resolve_gemm

SENTENCES = [["The", "cat", "sat", "."], ["Hello", "there"], ["Yes"]]


def _model(seed=0):
    torch.manual_seed(seed)
    model = ElmoBiLM(make_tiny_config()).eval()
    with torch.no_grad():  # nonzero biases, so the two seeds' models differ everywhere
        for p in model.parameters():
            p.add_(torch.empty_like(p).uniform_(-0.1, 0.1))
    return model


@pytest.mark.parametrize("choice", GEMMS)
def test_prepared_kernels_never_serve_other_devices(choice):
    """The oneDNN/MKL kernels are CPU kernels: a CUDA (or any non-CPU) weight gets plain products
    whatever the choice, and ``plain`` is plain everywhere."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert resolve_gemm(choice, torch.device("cuda"), dtype) == "plain"
        assert resolve_gemm(choice, torch.device("meta"), dtype) == "plain"
    assert resolve_gemm("plain", torch.device("cpu"), torch.float32) == "plain"
    assert resolve_gemm(choice, torch.device("cpu"), torch.float64) == "plain"  # no float64 kernel


def test_the_environment_default_is_read_once(monkeypatch):
    kernels.default_gemm.cache_clear()
    try:
        monkeypatch.setenv("ELMO_GEMM", "plain")
        assert LstmKernels().gemm == "plain"
        monkeypatch.setenv("ELMO_GEMM", "mkl")  # changing it later changes nothing
        assert LstmKernels().gemm == "plain" and kernels.default_gemm() == "plain"
        assert LstmKernels("ONEDNN").gemm == "onednn"  # an explicit choice wins
    finally:
        kernels.default_gemm.cache_clear()


def test_bilm_gemm_choice_and_set_gemm():
    model = _model()
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        auto = model(ids).layers
        model.bilm.set_gemm("plain")
        assert model.bilm.kernels.gemm == "plain"
        plain = model(ids).layers
    for a, b in zip(auto, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="gemm='fast'"):
        model.bilm.set_gemm("fast")


def test_prepared_weights_are_reused_and_released():
    model = _model()
    ids = batch_to_ids(SENTENCES)
    run = model.bilm.kernels
    with torch.no_grad():
        first = model(ids).layers
        prepared = dict(run._prepared)
        assert len(prepared) == model.config.bilm.n_layers  # one entry per layer (both directions)
        again = model(ids).layers
    assert all(run._prepared[k][1] is prepared[k][1] for k in prepared)  # reused, not rebuilt
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    model.train()
    assert run._prepared == {}
    model.eval()
    with torch.no_grad():
        model(ids)
    assert run._prepared
    model(ids)  # with gradients: the training path; an optimizer step may follow
    assert run._prepared == {}


def test_loading_other_weights_is_not_served_stale_prepared_weights():
    """load_state_dict copies into the same tensors: the prepared weights must go with it."""
    model, other = _model(0), _model(1)
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        model(ids)  # prepares model's weights
        model.load_state_dict(other.state_dict())
        got, expected = model(ids).layers, other(ids).layers
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_copies_carry_the_choice_not_the_prepared_weights():
    model = _model()
    model.bilm.set_gemm("plain")
    with torch.no_grad():
        model(batch_to_ids(SENTENCES))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.bilm.kernels.gemm == "plain" and clone.bilm.kernels._prepared == {}
    assert repr(model.bilm.kernels) == "LstmKernels(gemm='plain')"


def test_only_the_original_lstm_is_fused():
    """The original cell, with or without a recurrent regularizer (tests/elmo/
    test_kernels_regularizers.py); not a deep transition or another variant."""
    from elmo.cells import CifgLstm, PeepholeLstm
    from elmo.lstm import Lstm

    run = LstmKernels()
    plain = Lstm(4, 6, 3)
    assert run.fuses([plain, Lstm(4, 6, 3)])
    assert not run.fuses([plain, Lstm(4, 6, 3, proj_clip=1.0)])  # one loop needs equal clips
    assert not run.fuses([plain, Lstm(4, 6, 3).double()])
    assert not run.fuses([plain, Lstm(4, 6, 3, recurrent_dropout_kind="variational",
                                      recurrent_dropout=0.1)])  # nor equal regularizers
    for other in (Lstm(4, 6, 3, transition_depth=2), PeepholeLstm(4, 6, 3), CifgLstm(4, 6, 3)):
        assert not run.fuses([other]) and not other.runs_fused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_lstm_runs_plain_products_and_matches_cpu():
    model = _model()
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        cpu = model(ids).layers
        gpu_model = model.to("cuda")
        assert gpu_model.bilm.kernels.gemm_for(gpu_model.bilm.forward_layers[0].state_weight) == "plain"
        gpu = gpu_model(ids.to("cuda")).layers
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-5)
    gpu_model.train()
    sum(x.sum() for x in gpu_model(ids.to("cuda")).layers).backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu_model.parameters() if p.grad is not None)
