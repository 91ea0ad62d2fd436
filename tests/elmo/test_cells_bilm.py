"""Cells inside the biLM: padding, batching, stateful use, save/load, export refusal, the CLI and
the config fields."""

from __future__ import annotations

import json
import os

import h5py
import pytest
import torch

from conftest import make_tiny_config
from elmo import ElmoBiLM, ElmoConfig, batch_to_ids, load_original, save_original
from elmo.bilm import map_state
from elmo.cells.base import SteppedLayer
from elmo.config import CELLS, BiLMConfig
from elmo.lstm import LstmProjection

SENTENCES = [["The", "cat", "sat", "."], ["Hello", "Zürich"], ["A", "much", "longer", "sentence",
             "with", "seven", "tokens"], ["Yes"]]
CASES = [(cell, None) for cell in CELLS] + [("lstm", "zoneout"), ("sru", "zoneout"),
                                             ("gru", "variational")]


def build(cell, kind=None, **bilm):
    bilm = {"transition_depth": 2 if cell == "rhn" else 1, **bilm}
    config = make_tiny_config(cell=cell, recurrent_dropout_kind=kind,
                              recurrent_dropout=0.25 if kind else 0.0, **bilm)
    return ElmoBiLM(config).eval()


def perturb(model):
    with torch.no_grad():  # make every parameter matter (e.g. zero-initialised biases)
        for p in model.parameters():
            p.add_(torch.empty_like(p).uniform_(-0.1, 0.1))
    return model


@pytest.mark.parametrize("cell,kind", CASES)
def test_sentence_alone_equals_in_a_padded_batch(cell, kind):
    model = perturb(build(cell, kind))
    with torch.no_grad():
        batch = model(batch_to_ids(SENTENCES), keep_boundaries=True)
        for b, sentence in enumerate(SENTENCES):
            alone = model(batch_to_ids([sentence]), keep_boundaries=True)
            n = len(sentence) + 2
            for layer_b, layer_1 in zip(batch.layers, alone.layers):
                torch.testing.assert_close(layer_b[b, :n], layer_1[0], rtol=0, atol=1e-6)
                assert bool((layer_b[b, n:] == 0).all())  # padding stays zero
            for pair_b, pair_1 in zip(batch.state, alone.state):  # final states per row
                for st_b, st_1 in zip(pair_b, pair_1):
                    for x_b, x_1 in zip(st_b, st_1):
                        torch.testing.assert_close(x_b[b], x_1[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell,kind", CASES)
def test_padding_does_not_change_states_or_outputs(cell, kind):
    """Garbage at the padded positions of the biLM input changes nothing."""
    model = perturb(build(cell, kind))
    B, T, P = 3, 6, model.config.bilm.projection_dim
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([[6], [2], [4]])
    tokens = torch.randn(B, T, P) * mask.unsqueeze(-1)
    noisy = tokens + torch.randn(B, T, P) * 10 * (~mask).unsqueeze(-1)
    with torch.no_grad():
        clean_layers, clean_state = model.bilm(tokens, mask)
        noisy_layers, noisy_state = model.bilm(noisy, mask)
    for a, b in zip(clean_layers, noisy_layers):
        assert torch.equal(a, b)
    map_state(lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0), clean_state, noisy_state)


@pytest.mark.parametrize("cell,kind", CASES)
def test_stateful_windows_continue_the_sequence(cell, kind):
    """Forward direction: two consecutive windows read statefully give the same forward outputs
    and final forward state as the whole sequence at once (the state carries everything)."""
    model = perturb(build(cell, kind))
    words = [f"w{i}" for i in range(9)]
    ids = batch_to_ids([words, words[::-1]])
    P = model.config.bilm.projection_dim
    with torch.no_grad():
        whole = model(ids, add_boundaries=False)
        model.stateful = True
        first = model(ids[:, :5], add_boundaries=False)
        second = model(ids[:, 5:], add_boundaries=False)
    for k in range(1, model.num_layers):
        joined = torch.cat([first.layers[k], second.layers[k]], 1)[..., :P]
        torch.testing.assert_close(joined, whole.layers[k][..., :P], rtol=0, atol=1e-6)
    for layer_whole, layer_second in zip(whole.state, second.state):
        for x_w, x_s in zip(layer_whole[0], layer_second[0]):  # forward direction
            torch.testing.assert_close(x_w, x_s, rtol=0, atol=1e-6)
    model.reset_states()
    with torch.no_grad():
        again = model(ids[:, :5], add_boundaries=False)
    torch.testing.assert_close(again.layers[-1], first.layers[-1], rtol=0, atol=0)


@pytest.mark.parametrize("cell,kind", CASES)
def test_save_load_round_trip(cell, kind, tmp_path):
    model = perturb(build(cell, kind))
    model.set_warm_state(batch_to_ids([["<S>", "Some", "warm", "up", "</S>"]]))
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        before = model(ids).layers
    model.save_pretrained(tmp_path)
    loaded = ElmoBiLM.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config and loaded.config.bilm.cell == cell
    assert type(loaded.bilm.forward_layers[0]) is type(model.bilm.forward_layers[0])
    with torch.no_grad():
        after = loaded(ids).layers
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    saved = json.loads((tmp_path / "elmo_config.json").read_text())
    assert saved["bilm"]["cell"] == cell and saved["bilm"]["recurrent_dropout_kind"] == kind


@pytest.mark.parametrize("cell,kind", CASES)
def test_every_parameter_gets_a_gradient(cell, kind):
    model = build(cell, kind).train()
    out = model(batch_to_ids(SENTENCES))
    sum((layer * torch.randn_like(layer)).sum() for layer in out.layers).backward()
    for name, p in model.named_parameters():
        if name == "char_cnn.char_embedding.weight":
            continue  # only the characters present get a gradient
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("cell", [c for c in CELLS if c != "lstm"])
def test_export_to_the_original_format_is_refused(cell, tmp_path):
    model = build(cell)
    with pytest.raises(ValueError, match=f"cell='{cell}'.*save_pretrained"):
        save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    assert not os.listdir(tmp_path)


def test_export_of_a_regularized_lstm(tmp_path):
    """Variational/semeniuta act only in training: the plain LSTM export computes the same
    outputs. Zoneout changes evaluation and is refused."""
    model = perturb(build("lstm", "variational"))
    assert type(model.bilm.forward_layers[0]).__name__ == "Lstm"
    save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    loaded = load_original(tmp_path / "options.json", tmp_path / "weights.hdf5").eval()
    assert isinstance(loaded.bilm.forward_layers[0], LstmProjection)
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        for a, b in zip(model(ids).layers, loaded(ids).layers):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="zoneout"):
        save_original(build("lstm", "zoneout"), tmp_path / "o.json", tmp_path / "w.hdf5")


def test_default_lstm_is_unchanged(tiny_config):
    """The defaults keep the original cell, its parameter names and the original options.json."""
    assert tiny_config.bilm.cell == "lstm" and tiny_config.bilm.recurrent_dropout_kind is None
    model = ElmoBiLM(tiny_config)
    assert all(isinstance(m, LstmProjection)
               for m in list(model.bilm.forward_layers) + list(model.bilm.backward_layers))
    assert sorted(k for k in model.state_dict() if k.startswith("bilm.forward_layers.0.")) == [
        f"bilm.forward_layers.0.{n}" for n in ("initial_c", "initial_h", "input_bias", "input_weight",
                                               "projection_weight", "state_weight")]
    assert set(tiny_config.to_options()["lstm"]) == {"dim", "projection_dim", "n_layers", "cell_clip",
                                                     "proj_clip", "use_skip_connections"}
    assert ElmoConfig.from_options(tiny_config.to_options()) == tiny_config


def test_config_fields_validate_and_round_trip():
    with pytest.raises(ValueError, match="bilm.cell must be one of lstm, elman, .*qrnn; got 'lsmt'"):
        BiLMConfig(cell="lsmt")
    with pytest.raises(ValueError, match="recurrent_dropout_kind must be one of variational, semeniuta, zoneout"):
        BiLMConfig(recurrent_dropout_kind="dropconnect", recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="recurrent_dropout_kind is null"):
        BiLMConfig(recurrent_dropout=0.2)
    with pytest.raises(ValueError, match=r"recurrent_dropout must be in \[0, 1\)"):
        BiLMConfig(recurrent_dropout_kind="zoneout", recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="transition_depth must be 1 for the qrnn"):
        BiLMConfig(cell="qrnn", transition_depth=2)
    with pytest.raises(ValueError, match="transition_depth must be a positive integer"):
        BiLMConfig(cell="rhn", transition_depth=0)
    config = make_tiny_config(cell="rhn", transition_depth=3, recurrent_dropout_kind="semeniuta",
                              recurrent_dropout=0.2, input_skip_connections=True)
    assert ElmoConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown key.*'cel'.*valid keys.*'cell'"):
        ElmoConfig.from_dict({"bilm": {"cel": "gru"}})


def test_transition_depth_adds_layers():
    shallow, deep = build("gru"), build("gru", transition_depth=3)
    layer = deep.bilm.forward_layers[0]
    assert len(layer.transition_weights) == 2 and layer.transition_weights[0].shape == (12, 12)
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in shallow.parameters())
    assert extra == 2 * 2 * 2 * (12 * 12 + 12)  # 2 directions x 2 layers x 2 transition layers
    assert len(build("rhn", transition_depth=3).bilm.forward_layers[0].micro_weights) == 3


def test_input_skip_connections():
    """With input_skip_connections, layer k >= 1 reads (layer k-1 output + token vector)."""
    model = perturb(build("gru", input_skip_connections=True, use_skip_connections=False))
    seen = []
    model.bilm.forward_layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    ids = batch_to_ids([["one", "two", "three"]])
    with torch.no_grad():
        out = model(ids, keep_boundaries=True)
    P = model.config.bilm.projection_dim
    expected = out.layers[1][0, :, :P] + out.layers[0][0, :, :P]  # (T, P): fwd layer 1 + tokens
    torch.testing.assert_close(seen[0][:, 0], expected, rtol=0, atol=1e-6)
    plain = build("gru", use_skip_connections=False)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = plain(ids, keep_boundaries=True)
    torch.testing.assert_close(other.layers[1], out.layers[1], rtol=0, atol=0)  # same first layer
    assert not torch.allclose(other.layers[2], out.layers[2])


DENSE_CASES = [("lstm", {}), ("lstm", {"use_skip_connections": False, "cell_clip": None}),
               ("lstm", {"input_skip_connections": True}), ("lstm", {"transition_depth": 2}),
               ("gru", {}), ("rhn", {}), ("peephole", {})]


@pytest.mark.parametrize("cell,bilm", DENSE_CASES)
def test_the_dense_mode_of_an_export_equals_the_packed_model(cell, bilm, monkeypatch):
    """What ElmoBiLM computes while torch.export traces it (no host reads: every row for all T
    steps in input order, padding masked) equals the eager packed path at every real position."""
    model = perturb(build(cell, **bilm))
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        packed = model(ids)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        calls, run = [], SteppedLayer.forward_dense
        monkeypatch.setattr(SteppedLayer, "forward_dense", lambda *a: calls.append(1) or run(*a))
        dense = model(ids)
    assert len(calls) == 2 * model.config.bilm.n_layers  # every layer ran the dense loop
    assert torch.equal(dense.mask, packed.mask)
    for a, b in zip(dense.layers, packed.layers):
        assert a.shape == b.shape == (4, 7, model.output_dim)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert not a[~dense.mask].any()  # zeros at padding
    assert (dense.layers[-1][3, 0] != 0).all()


@pytest.mark.parametrize("cell", ["sru", "peephole"])
def test_elmo_embed_cli_with_a_cell_model(cell, tmp_path):
    from elmo.cli import main

    model = perturb(build(cell))
    model.save_pretrained(tmp_path / "model")
    text = tmp_path / "in.txt"
    text.write_text("The cat sat .\nHello Zürich\n", encoding="utf-8")
    assert main([str(text), str(tmp_path / "out.hdf5"), "--model", str(tmp_path / "model"),
                 "--all", "--quiet"]) == 0
    with torch.no_grad():
        expected = model(batch_to_ids([["Hello", "Zürich"]]), keep_boundaries=True).layers
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        got = torch.from_numpy(f["1"][...])
    assert got.shape == (3, 2, model.output_dim)
    torch.testing.assert_close(got, torch.stack([x[0, 1:3] for x in expected]), rtol=0, atol=1e-5)


def test_bfloat16_weights_run(tmp_path):
    """Matmuls in the weights' dtype, element-wise work in float32 (as LstmProjection)."""
    for cell in ("gru", "sru", "qrnn", "residual-lstm"):
        model = perturb(build(cell))
        ids = batch_to_ids(SENTENCES)
        with torch.no_grad():
            ref = model(ids).layers[-1]
            out = model.to(torch.bfloat16)(ids).layers[-1]
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=0, atol=0.1)
