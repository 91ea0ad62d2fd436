"""The GPU path (issue 17 point 4), parametrized on the device.

On CUDA each test compares the GPU against the CPU (float32, 1e-4). Without CUDA the "cuda"
cases skip and the "cpu" cases run the same code against a reference that is meaningful on a
CPU: float32 against float64 for the numerics, bfloat16 against float32, an interrupted run
against a straight one. ``scripts/gpu_check.sh`` runs this file first on a GPU machine.
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch

from elmo import Embedder, ElmoBiLM, batch_to_ids, load_original
from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig, preset
from pretrain.batches import WindowBatcher
from pretrain.config import PretrainConfig
from pretrain.corpus import EncodedCorpus
from pretrain.distributed import DistInfo
from pretrain.lm import BidirectionalLM
from pretrain.train import Trainer
from pretrain.vocab import Vocabulary, WordTable

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["Hello", "!"],
             ["A", "rather", "longer", "sentence", "with", "unusual", "words", ":", "zyzzyva", "."],
             ["One"]]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_of(device: str) -> tuple[str, torch.dtype]:
    """What ``device``'s float32 result is compared with: the CPU (for a GPU), else float64."""
    return ("cpu", torch.float32) if device != "cpu" else ("cpu", torch.float64)


def forward_backward(model: ElmoBiLM, device: str, dtype: torch.dtype) -> tuple[list, dict]:
    """Layers of SENTENCES and the gradients of a fixed weighting of them, on (device, dtype)."""
    model = model.to(device=device, dtype=dtype).eval()
    model.zero_grad(set_to_none=True)
    out = model(batch_to_ids(SENTENCES).to(device))
    g = torch.Generator().manual_seed(0)
    loss = sum((layer * torch.randn(layer.shape, generator=g).to(device, dtype)).sum()
               for layer in out.layers)
    loss.backward()
    grads = {n: p.grad.detach().cpu().double() for n, p in model.named_parameters() if p.grad is not None}
    return [layer.detach().cpu().double() for layer in out.layers], grads


def assert_same(a: tuple, b: tuple, atol: float) -> None:
    layers_a, grads_a = a
    layers_b, grads_b = b
    assert len(layers_a) == len(layers_b)
    for x, y in zip(layers_a, layers_b):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:  # gradients: relative to the size of each tensor's gradient
        scale = max(1.0, float(grads_b[name].abs().max()))
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=atol * scale, msg=name)


def fixture_model(reference_dir: str) -> ElmoBiLM:
    return load_original(os.path.join(reference_dir, "options.json"),
                         os.path.join(reference_dir, "lm_weights.hdf5"))


@pytest.mark.parametrize("device", DEVICES)
def test_tf_fixture_model_forward_and_backward(device, reference_dir):
    got = forward_backward(fixture_model(reference_dir), device, torch.float32)
    want = forward_backward(fixture_model(reference_dir), *reference_of(device))
    assert_same(got, want, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_preset_forward_and_backward(device):
    torch.manual_seed(0)
    model = ElmoBiLM(preset("tiny"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = forward_backward(model, device, torch.float32)
    model = ElmoBiLM(preset("tiny"))
    model.load_state_dict(state)
    want = forward_backward(model, *reference_of(device))
    assert_same(got, want, 1e-4)


# -- training ------------------------------------------------------------------------------------
def toy_corpus():
    import random

    rng = random.Random(0)
    words = ["the", "cat", "a", "dog", "sees", "likes", "ball", "red", "house", "."]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(200)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + sorted(set(words)))
    table = WordTable(vocab)
    corpus = EncodedCorpus(table, [table.encode(line.split()) for line in lines])
    return lines, corpus, table, vocab


def small_config(**train) -> PretrainConfig:
    config = PretrainConfig(model=ElmoConfig(
        CharCNNConfig(embedding_dim=4, filters=[[1, 4], [2, 8], [3, 8]], n_highway=1),
        BiLMConfig(dim=32, projection_dim=16, n_layers=2, cell_clip=3.0, proj_clip=3.0))).to_dict()
    config["data"].update({"batch_size": 8, "window": 10, "heldout_fraction": 0.1})
    config["softmax"].update({"num_samples": 6})
    config["optim"].update({"optimizer": "adam", "lr": 0.01, "dropout": 0.1})
    config["train"].update({"max_steps": 20, "progress": False, "eval_every": 1000, **train})
    return PretrainConfig.from_dict(config)


def first_step_loss(device: str, precision: str) -> float:
    _, corpus, table, vocab = toy_corpus()
    config = small_config(precision=precision).with_override("optim.dropout=0.0")
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    trainer = Trainer(lm, WindowBatcher(corpus, table, 8, 10, 0), config, 20,
                      info=DistInfo(device=torch.device(device)))
    return trainer.train_step(trainer.batcher.next_batch())["loss"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_step_has_the_float32_loss(device):
    fp32, bf16 = first_step_loss(device, "fp32"), first_step_loss(device, "bf16")
    assert 1.0 < fp32 < 10.0
    assert abs(bf16 - fp32) < 1e-2 * fp32, (fp32, bf16)


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_resumed_half_way_equals_the_straight_run(device, tmp_path):
    from pretrain.run import run

    lines, *_ = toy_corpus()
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = small_config(device=device, checkpoint_every=5, log_every=1)

    def record(losses, stop_at=None):
        def callback(trainer, metrics):
            losses[metrics["step"]] = metrics["loss"]
            return metrics["step"] == stop_at  # True: stop after this step (with a checkpoint)
        return callback

    straight, resumed = {}, {}
    run(config, [str(corpus)], str(tmp_path / "a"), callback=record(straight))
    first = run(config, [str(corpus)], str(tmp_path / "b"), callback=record(resumed, stop_at=10))
    assert first["completed"] is False and first["step"] == 10
    second = run(config, [str(corpus)], str(tmp_path / "b"), resume=True, callback=record(resumed))
    assert second["completed"] is True and sorted(resumed) == list(range(1, 21))
    # A GPU adds some gradients with atomics (gather backward): not bit-exact from run to run.
    tol = 1e-6 if device == "cpu" else 1e-4
    for step in straight:
        assert abs(straight[step] - resumed[step]) < tol, (step, straight[step], resumed[step])
    a, b = (ElmoBiLM.from_pretrained(str(tmp_path / d)).state_dict() for d in "ab")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=10 * tol, msg=name)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["step"] == 20


# -- the featurizer ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_the_featurizer_on_the_device(device):
    torch.manual_seed(0)
    model = ElmoBiLM(preset("tiny"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = Embedder(model, device=device, batch_size=2).embed_sentences(SENTENCES)
    ref_device, ref_dtype = reference_of(device)
    model = ElmoBiLM(preset("tiny"))
    model.load_state_dict(state)
    want = Embedder(model, device=ref_device, dtype=ref_dtype, batch_size=3).embed_sentences(SENTENCES)
    for s, a, b in zip(SENTENCES, got, want):
        assert a.shape == b.shape == (3, len(s), model.output_dim) and a.dtype == "float32"
        assert abs(a.astype("float64") - b.astype("float64")).max() < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_the_compiled_featurizer_gives_the_eager_output(device, monkeypatch):
    # aot_eager: Dynamo's trace of the model with no code generation (inductor: scripts/gpu_check.sh)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ElmoBiLM(preset("tiny"))
    eager = list(Embedder(model, device=device, batch_size=2).embed_sentences(SENTENCES))
    compiled = list(Embedder(model, device=device, batch_size=2, compile=True).embed_sentences(SENTENCES))
    for a, b in zip(eager, compiled):
        assert abs(a - b).max() < 1e-5


# -- CUDA only -----------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("directions", ["both", "forward"])
def test_a_cuda_training_step_never_synchronises(directions):
    _, corpus, table, vocab = toy_corpus()
    config = small_config(directions=directions)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    trainer = Trainer(lm, WindowBatcher(corpus, table, 8, 10, 0), config, 20,
                      info=DistInfo(device=torch.device("cuda")))
    assert not trainer.sync_every_step and trainer.optimizer.defaults.get("fused")
    trainer.train_step(trainer.batcher.next_batch())  # optimizer state, allocator warm-up
    batches = [trainer.batcher.next_batch() for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 1.0 < trainer.train_step(trainer.batcher.next_batch())["loss"] < 10.0


@cuda_only
def test_a_cuda_featurizer_batch_is_launched_without_synchronising():
    torch.manual_seed(0)
    embedder = Embedder(ElmoBiLM(preset("tiny")), device="cuda")
    embedder.embed_batch(SENTENCES)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            launched = embedder._launch(SENTENCES)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    arrays = embedder._collect(launched)
    assert [a.shape[1] for a in arrays] == [len(s) for s in SENTENCES]
