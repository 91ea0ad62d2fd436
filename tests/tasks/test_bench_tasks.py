"""scripts/bench_tasks.py: --phases profiles the real training loop (tasks.train.train) with
torch.profiler and puts each step's time into phases; the epoch timings and their report."""

import importlib.util
import json
import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from conftest import make_tiny_config
from elmo import ElmoBiLM
from tasks import ner
from tasks.cache import LayerCache
from tasks.config import resolve_config
from test_task_cli import ner_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("bench_tasks", os.path.join(ROOT, "scripts", "bench_tasks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path):
    ner_file(tmp_path / "train.txt", n=10)
    torch.manual_seed(0)
    bilm = ElmoBiLM(make_tiny_config())
    cfg = resolve_config("ner", {"hidden_dim": 8, "word_dim": 6, "char_dim": 5, "char_filters": "1:4,2:4",
                                 "batch_size": 3, "epochs": 1, "progress": False, "mix_l2": 0.01,
                                 "grad_clip": 0.5, "dropout": 0.3})
    data = ner.read(str(tmp_path / "train.txt"), cfg)
    cache = LayerCache(bilm, batch_size=4)
    cache.fill(x.tokens for x in data)
    return cfg, data, bilm, cache


def test_phases_of_the_real_training_loop(setup, tmp_path):
    bench = load_script()
    cfg, data, bilm, cache = setup
    calls = []
    hook = bilm.register_forward_hook(lambda *_: calls.append(1))
    trace = str(tmp_path / "trace.json")
    seconds = bench.phase_seconds(cfg, bilm, data, cache, trace=trace)
    hook.remove()
    assert calls == []  # the epoch ran on the cached layers only
    assert seconds["steps"] == 4  # 10 sentences in batches of 3
    for name in bench.PHASES:  # every named phase was seen in every run of the step
        assert seconds[name] > 0, name
    named = sum(seconds[name] for name in bench.PHASES)
    # disjoint top-level events inside the steps: they never add up to more than the steps
    assert named <= seconds["total"] + 1e-9
    assert seconds["other"] == pytest.approx(seconds["total"] - named, abs=1e-9)
    assert seconds["other"] >= -1e-9
    # the steps lie inside the loop's own train_seconds (profiler clock vs perf_counter: 1 ms slack)
    assert seconds["total"] <= seconds["epoch_s"] + 1e-3
    assert named >= 0.5 * seconds["total"]  # the phases are most of the step, not a sliver of it
    with open(trace) as f:
        assert any(e.get("name") == "BiLSTM fwd" for e in json.load(f)["traceEvents"])


def test_profiled_epoch_trains_as_the_plain_loop(setup, tmp_path):
    """The ranges and hooks change no computation: an unprofiled epoch from the same seed trains to
    the same loss; --phase-batches stops the profiled epoch early."""
    bench = load_script()
    cfg, data, bilm, cache = setup
    seconds = bench.phase_seconds(cfg, bilm, data, cache)
    model, maker, labels = bench.build_head(cfg, bilm, data, cache)
    log = tmp_path / "metrics.jsonl"
    bench.train(model, ner, cfg, ner.targets(data, cfg), data[:1], maker, labels, log_path=str(log))
    assert json.loads(log.read_text().splitlines()[0])["train_loss"] == pytest.approx(seconds["train_loss"], rel=1e-6)
    two = bench.phase_seconds(cfg, bilm, data, cache, max_batches=2)
    assert two["steps"] == 2


def _profiled_steps(bench, enc_width: int, lstm_hidden: int, steps: int = 3):
    """A hand-made loop with the ranges bench_tasks puts on the NER head: a Linear "encoder" and an
    LSTM "BiLSTM" whose sizes decide which backward is heavy."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(enc_width, enc_width), torch.nn.Linear(enc_width, 16))
            self.lstm = torch.nn.LSTM(16, lstm_hidden, batch_first=True)
            self.output = torch.nn.Linear(lstm_hidden, 3)

        def loss(self, x):
            h, _ = self.lstm(self.encoder(x))
            return self.output(h).logsumexp(-1).mean()

    torch.manual_seed(0)
    head = Head()
    handles = bench._module_range(head.encoder, "encoder fwd") + bench._module_range(head.lstm, "BiLSTM fwd")
    optimizer = torch.optim.Adam(head.parameters())
    x = torch.randn(8, 12, enc_width)
    head.loss(x).backward()  # oneDNN prepares its LSTM kernels on the first call: not timed
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps + 1):
            with record_function("batch"):
                if i == steps:
                    break
                batch = x.clone()
            with record_function("loss fwd"):
                loss = head.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
    for h in handles:
        h.remove()
    return bench.step_phases(prof.events())


def test_backward_is_attributed_by_the_forward_that_made_it():
    """The heavy part's backward is found by sequence number, wherever the engine runs it."""
    bench = load_script()
    torch.set_num_threads(1)
    wide_encoder = _profiled_steps(bench, enc_width=2048, lstm_hidden=4)
    big_lstm = _profiled_steps(bench, enc_width=8, lstm_hidden=512)
    for ms in (wide_encoder, big_lstm):
        assert ms["steps"] == 3
        assert sum(ms[p] for p in bench.PHASES) <= ms["total"] + 1e-9
        assert ms["clip"] > 0 and ms["Adam"] > 0 and ms["zero_grad"] > 0
    assert wide_encoder["encoder bwd"] > wide_encoder["BiLSTM bwd"]
    assert wide_encoder["encoder fwd"] > wide_encoder["BiLSTM fwd"]
    assert big_lstm["BiLSTM bwd"] > big_lstm["encoder bwd"]
    assert big_lstm["BiLSTM fwd"] > big_lstm["encoder fwd"]


def test_step_phases_needs_a_step():
    bench = load_script()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(2).sum()
    with pytest.raises(ValueError, match="no profiled training step"):
        bench.step_phases(prof.events())


def test_main_reports_first_and_later_epochs(tmp_path, capsys):
    bench = load_script()
    ner_file(tmp_path / "train.txt", n=6)
    assert bench.main(["--preset", "tiny", "--train", str(tmp_path / "train.txt"), "--epochs", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 6 and result["epochs"] == 3
    for mode in ("recomputed", "cached"):
        epochs = result[f"{mode}_epochs_s"]
        assert len(epochs) == 3 and all(x > 0 for x in epochs)  # no early stopping cut a mode short
        assert result[f"{mode}_epoch_s"] == epochs[0]
        assert result[f"{mode}_later_epoch_s"] == pytest.approx((epochs[1] + epochs[2]) / 2)
        assert isinstance(result[f"{mode}_minor_faults"], int)
    assert result["speedup"] == pytest.approx(result["recomputed_epoch_s"] / result["cached_epoch_s"])
    assert result["speedup_later"] == pytest.approx(result["recomputed_later_epoch_s"] / result["cached_later_epoch_s"])
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny", "--train", str(tmp_path / "train.txt"), "--epochs", "0"])


def test_main_writes_its_markdown_section(tmp_path, capsys):
    bench = load_script()
    ner_file(tmp_path / "train.txt", n=6)
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nkept as it is\n")
    argv = ["--preset", "tiny", "--train", str(tmp_path / "train.txt"), "--threads", "1", "--phases",
            "--markdown", str(page)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nkept as it is\n")
    assert text.count("<!-- bench:tasks-tiny-6-t1 -->") == 1 and text.count("<!-- /bench:tasks-tiny-6-t1 -->") == 1
    assert "| BiLSTM bwd |" in text and "| whole step |" in text and "scripts/bench_tasks.py --preset tiny" in text
    for line in printed.splitlines()[2:]:  # the printed tables are the section's
        assert line in text
    assert bench.main(argv) == 0  # a second run replaces the section
    assert page.read_text().count("<!-- bench:tasks-tiny-6-t1 -->") == 1
