"""An interrupted and resumed run follows the loss curve of an uninterrupted one (1e-6 on CPU)."""

import json
import os
import signal

import pytest
import torch

from pretrain.checkpoint import list_checkpoints
from pretrain.run import run
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences, write_lines  # noqa: F401
from elmo.serialization import find_weights, load_weights

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 12


def config(mode, streaming=False):
    # Dropout on (RNG state), sampled softmax (negatives per step), Adagrad (accumulators),
    # a linear decay (schedule state), window mode (carried LSTM state, data position).
    return tiny_pretrain_config(
        data={"batch_mode": mode, "batch_size": 3, "window": 5, "heldout_fraction": 0.1,
              "streaming": streaming, "shuffle_buffer": 16},
        optim={"warmup_steps": 2, "schedule": "linear", "dropout": 0.2},
        train={"max_steps": STEPS, "checkpoint_every": 4, "log_every": 1, "eval_every": 100})


def record(losses, stop_at=None, crash_at=None, stop_signal=signal.SIGINT):
    def callback(trainer, metrics):
        losses[metrics["step"]] = metrics["loss"]
        if metrics["step"] == stop_at:
            os.kill(os.getpid(), stop_signal)  # a real Ctrl-C / SIGTERM: finish the step, checkpoint, stop
        if metrics["step"] == crash_at:
            raise RuntimeError("simulated crash")  # no checkpoint: resume from the last periodic one
    return callback


@pytest.mark.parametrize("mode, streaming", [("window", False), ("sentence", False), ("window", True)])
def test_resume_follows_the_same_loss_curve(tmp_path, mode, streaming):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(120))
    full = {}
    run(config(mode, streaming), [corpus], str(tmp_path / "a"), callback=record(full))
    assert sorted(full) == list(range(1, STEPS + 1))

    b, part = str(tmp_path / "b"), {}
    summary = run(config(mode, streaming), [corpus], b, callback=record(part, stop_at=5))
    assert summary["completed"] is False and summary["step"] == 5
    assert [s for s, _ in list_checkpoints(b)] == [4, 5]  # the periodic one and the Ctrl-C one
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config(mode, streaming), [corpus], b, resume=True, callback=record(part, crash_at=10))
    assert [s for s, _ in list_checkpoints(b)][-1] == 8
    summary = run(config(mode, streaming), [corpus], b, resume=True, callback=record(part))
    assert summary["completed"] is True
    assert sorted(part) == list(range(1, STEPS + 1))
    for step in full:
        assert abs(full[step] - part[step]) < 1e-6, (step, full[step], part[step])

    a_weights = load_weights(find_weights(tmp_path / "a"))
    b_weights = load_weights(find_weights(b))
    for k in a_weights:
        torch.testing.assert_close(a_weights[k], b_weights[k], rtol=0, atol=1e-6)
    # The metrics log holds each step once, as if the run had never stopped.
    with open(os.path.join(b, "metrics.jsonl")) as f:
        steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    held_a = json.loads((tmp_path / "a" / "results.json").read_text())["heldout"]
    held_b = json.loads(open(os.path.join(b, "results.json")).read())["heldout"]
    assert held_a == pytest.approx(held_b, rel=1e-6)


def test_sigterm_stops_like_ctrl_c_and_the_handlers_are_put_back(tmp_path):
    # What a scheduler (SLURM, Kubernetes) sends before it kills a job: the step ends, a checkpoint
    # is written, and the run resumes on the uninterrupted curve.
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(60))
    cfg = config("window").with_override("train.max_steps=6")
    full = {}
    run(cfg, [corpus], str(tmp_path / "a"), callback=record(full))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    b, part = str(tmp_path / "b"), {}
    summary = run(cfg, [corpus], b, callback=record(part, stop_at=3, stop_signal=signal.SIGTERM))
    assert summary["completed"] is False and summary["step"] == 3
    assert [s for s, _ in list_checkpoints(b)] == [3]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    summary = run(cfg, [corpus], b, resume=True, callback=record(part))
    assert summary["completed"] is True and sorted(part) == list(range(1, 7))
    assert max(abs(full[k] - part[k]) for k in full) < 1e-6


def test_a_second_run_into_the_same_directory_needs_resume(tmp_path):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(40))
    run(config("window").with_override("train.max_steps=2"), [corpus], str(tmp_path / "a"))
    with pytest.raises(FileExistsError, match="pass --resume"):
        run(config("window"), [corpus], str(tmp_path / "a"))
