"""train.compile (issue 17 point 2): the model's forward and backward through torch.compile give
the eager losses. Inductor on a CPU compiles C++ with gcc (minutes on two shared cores: marked
slow), so the run is small: the tiny preset's model, 4-token windows, 5 steps. The fast test
traces the same step with the ``aot_eager`` backend (Dynamo and AOTAutograd, no code generation)
and checks that it is one graph: no graph breaks, so nothing falls back to Python mid-step."""

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from pretrain.batches import WindowBatcher
from pretrain.config import pretrain_preset
from pretrain.corpus import EncodedCorpus
from pretrain.lm import BidirectionalLM
from pretrain.train import Trainer
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import single_thread, toy_sentences  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def losses(compile: bool, softmax: str) -> list:
    sentences = [s.split() for s in toy_sentences(300)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + sorted({w for s in sentences for w in s}))
    table = WordTable(vocab)
    corpus = EncodedCorpus(table, [table.encode(s) for s in sentences])
    config = pretrain_preset("tiny")
    # No dropout: compiled code draws its masks from another random stream.
    for assignment in (f"train.compile={str(compile).lower()}", "optim.dropout=0.0", "data.batch_size=4",
                       "data.window=4", f"softmax.kind={softmax}", "softmax.num_samples=12"):
        config = config.with_override(assignment)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    trainer = Trainer(lm, WindowBatcher(corpus, table, 4, 4, 0), config, 5)
    assert (trainer.step_model is not trainer.model) == compile
    return [trainer.train_step(trainer.batcher.next_batch())["loss"] for _ in range(5)]


@pytest.mark.parametrize("softmax", ["sampled"])
def test_the_traced_step_is_one_graph_with_the_eager_losses(monkeypatch, softmax):
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    eager, compiled = losses(False, softmax), losses(True, softmax)
    assert eager[0] != eager[-1]  # it trains
    assert max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-5, (eager, compiled)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.slow
def test_inductor_compiled_steps_give_the_eager_losses():
    torch._dynamo.reset()
    eager, compiled = losses(False, "sampled"), losses(True, "sampled")
    assert max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-5, (eager, compiled)


def test_the_compile_flag_sets_the_config_field(tmp_path):
    from pretrain.cli import build_parser, resolve_config

    args = build_parser().parse_args(["--train", "x.txt", "--out", str(tmp_path / "run"), "--compile",
                                      "--max-steps", "3"])
    assert resolve_config(args).train.compile is True
    args = build_parser().parse_args(["--train", "x.txt", "--out", str(tmp_path / "run"), "--max-steps", "3"])
    assert resolve_config(args).train.compile is False
