"""The training step never waits for the device (issue 17 point 1), shown on a CPU.

A GPU stalls whenever the host reads a value back: ``.item()``, ``int(t)``, ``.tolist()``, a
branch on a tensor, an index with a boolean mask (its output size depends on the values). On a
CPU those reads are free, so the library takes them there (``elmo.sync.may_sync``); these tests
turn that off to run the GPU code path and record every such read, both the Python-level calls
and the aten operators that imply one (``_local_scalar_dense``, ``nonzero``, ``unique``, boolean
``index``/``index_put``). On CUDA, tests/test_cuda.py runs the same step under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import re
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import elmo.sync
from pretrain.batches import WindowBatcher
from pretrain.corpus import EncodedCorpus
from pretrain.lm import BidirectionalLM
from pretrain.train import NonFiniteError, Trainer
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique2",
            "unique_dim", "unique_consecutive", "is_nonzero", "equal", "repeat_interleave",
            "masked_scatter"}
PY_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class HostReads(TorchDispatchMode):
    """Records every read of tensor values by the host (where in our code it came from)."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []
        for name in PY_READS:
            original = getattr(torch.Tensor, name)

            def patched(t, *args, _original=original, _name=name, **kwargs):
                self._record(_name)
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, patched)

    def _record(self, what: str) -> None:
        stack = "".join(traceback.format_stack()[:-2])
        ours = re.findall(r'File ".*?/((?:elmo|pretrain)/[^"]+)", line (\d+)', stack)
        self.reads.append((what, f"{ours[-1][0]}:{ours[-1][1]}" if ours else "outside elmo/pretrain"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bad = name in SYNC_OPS
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            bad = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if bad:
            self._record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def make_trainer(monkeypatch, device_path=True, steps=100, **sections):
    sentences = [s.split() for s in toy_sentences(200)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + sorted({w for s in sentences for w in s}))
    table = WordTable(vocab)
    corpus = EncodedCorpus(table, [table.encode(s) for s in sentences])
    sections.setdefault("softmax", {"num_samples": 12})
    config = tiny_pretrain_config(data={"batch_size": 4, "window": 6}, **sections)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    trainer = Trainer(lm, WindowBatcher(corpus, table, 4, 6, 0), config, steps)
    if device_path:  # what a GPU does: no value reads in the library, flags read at intervals,
        monkeypatch.setattr(elmo.sync, "may_sync", lambda tensor: False)
        trainer.sync_every_step = False
        lm.bilm.bilm.set_gemm("plain")  # and torch's own products (the CPU kernels are CPU-only)
    return trainer


@pytest.mark.parametrize("optimizer, precision, softmax", [
    ("adagrad", "fp32", "sampled"), ("adam", "bf16", "sampled"), ("adam", "fp16", "full"),
    ("adagrad", "fp32", "full")])
def test_a_training_step_reads_nothing_back(monkeypatch, optimizer, precision, softmax):
    trainer = make_trainer(monkeypatch, optim={"optimizer": optimizer}, train={"precision": precision},
                           softmax={"kind": softmax, "num_samples": 12})
    assert trainer.optimizer.defaults.get("fused")
    trainer.train_step(trainer.batcher.next_batch())  # first step: optimizer state is created
    batches = [trainer.batcher.next_batch() for _ in range(3)]  # built on the host
    reads = HostReads(monkeypatch)
    with reads:
        results = [trainer.train_step(b) for b in batches]
    assert reads.reads == [], reads.reads
    assert trainer.lm.softmax.kind == softmax
    # The metrics are there once read (one read for all of them).
    with reads:
        loss = results[-1]["loss"]
    assert len(reads.reads) == 1 and reads.reads[0][0] == "tolist" and 0 < loss < 20


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_a_forward_only_training_step_reads_nothing_back(monkeypatch, softmax):
    """train.directions "forward" (Kim et al.'s recipe, no dropout on the token vectors): the same
    entrance with one stack, the window's full rows: no lengths read from the device either."""
    trainer = make_trainer(monkeypatch, optim={"optimizer": "sgd", "lr": 1.0, "input_dropout": False},
                           train={"directions": "forward"}, softmax={"kind": softmax, "num_samples": 12})
    trainer.train_step(trainer.batcher.next_batch())
    batches = [trainer.batcher.next_batch() for _ in range(3)]
    reads = HostReads(monkeypatch)
    with reads:
        results = [trainer.train_step(b) for b in batches]
    assert reads.reads == [], reads.reads
    backward = [p.grad for p in trainer.lm.bilm.bilm.backward_layers.parameters()]
    assert backward and all(g is None for g in backward)  # the backward stack never ran
    with reads:
        loss = results[-1]["loss"]
    assert 0 < loss < 20


def test_the_loop_reads_only_at_log_steps(monkeypatch):
    trainer = make_trainer(monkeypatch, steps=12,
                           train={"log_every": 4, "eval_every": 1000, "checkpoint_every": 1000})
    reads = HostReads(monkeypatch)
    counts = {}

    def callback(t, metrics):  # looks at the step number only (a host int)
        counts[metrics["step"]] = len(reads.reads)
        return False

    trainer.callback = callback
    with reads:
        assert trainer.fit()
    # Reads between the callback of step k and that of step k + 1 belong to step k's bookkeeping.
    new = {k: counts[k + 1] - counts[k] for k in range(1, 11)}
    assert {k for k, n in new.items() if n} == {4, 8}, (new, reads.reads)
    assert trainer.tokens == 12 * 4 * 6


def test_on_cpu_a_non_finite_loss_stops_before_the_update(monkeypatch):
    trainer = make_trainer(monkeypatch, device_path=False)
    assert trainer.sync_every_step  # the CPU default
    trainer.train_step(trainer.batcher.next_batch())
    before = {k: v.clone() for k, v in trainer.lm.state_dict().items()}
    poison(trainer)
    with pytest.raises(NonFiniteError, match="step 2: the loss is nan") as err:
        trainer.train_step(trainer.batcher.next_batch())
    assert err.value.step == 2 and isinstance(err.value, FloatingPointError)
    for k, v in trainer.lm.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.step == 1


def test_on_the_device_path_a_non_finite_step_is_skipped_and_reported(monkeypatch, tmp_path):
    trainer = make_trainer(monkeypatch)
    trainer.out_dir = str(tmp_path)
    trainer.train_step(trainer.batcher.next_batch())
    before = {k: v.clone() for k, v in trainer.lm.state_dict().items()}
    undo = poison(trainer)
    trainer.train_step(trainer.batcher.next_batch())  # step 2: no error yet, no update either
    for k, v in trainer.lm.state_dict().items():
        assert torch.equal(v, before[k]), k
    undo()
    trainer.train_step(trainer.batcher.next_batch())  # step 3 is fine and updates
    assert any(not torch.equal(v, before[k]) for k, v in trainer.lm.state_dict().items())
    assert all(torch.isfinite(v).all() for v in trainer.lm.state_dict().values())
    with pytest.raises(NonFiniteError, match="step 2") as err:
        trainer.save_checkpoint()
    assert err.value.step == 2 and not list(tmp_path.iterdir())  # nothing written


def poison(trainer):
    """Make the softmax return NaN losses until the returned function is called."""
    softmax = trainer.lm.softmax
    original = softmax.forward
    softmax.forward = lambda *args, **kwargs: original(*args, **kwargs) * float("nan")
    return lambda: setattr(softmax, "forward", original)


@pytest.mark.parametrize("lengths", [[5, 5, 5], [3, 5, 1]])
def test_row_lengths_from_the_host_give_the_same_layers(lengths):
    from elmo import ElmoBiLM, batch_to_ids
    from pretrain_util import tiny_model_config

    torch.manual_seed(0)
    model = ElmoBiLM(tiny_model_config()).eval()
    sentences = [[f"w{i}{j}" for j in range(n)] for i, n in enumerate(lengths)]
    ids = batch_to_ids(sentences)
    state = model.bilm.default_state(len(lengths))
    with torch.no_grad():
        want = model(ids, state)
        got = model(ids, state, lengths=lengths)
    for a, b in zip(want.layers, got.layers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(torch.utils._pytree.tree_leaves(want.state), torch.utils._pytree.tree_leaves(got.state)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
