"""Seconds per NER training epoch on CoNLL-2003 with the frozen ELMo recomputed vs. cached.

Recomputed: every batch runs the biLM (without gradients) before the head, as the original
training did. Cached: the layers of every sentence are computed once (timed separately), and
the epoch trains the head on them. Both epochs run the same ``tasks.train.train`` loop; the time
is its ``train_seconds`` (training only, without the dev evaluation).

    flock /tmp/bench.lock .venv/bin/python scripts/bench_tasks.py --model runs/main/lm --threads 2
    .venv/bin/python scripts/bench_tasks.py --preset small --max-sentences 500   # a quick check

With ``--epochs N`` each mode trains N epochs and the mean of epochs 2..N is reported beside the
first. ``--phases`` profiles one more cached epoch of the same loop with ``torch.profiler`` and
splits its steps into phases (``step_phases``); ``--breakdown`` times the head's BiLSTM alone.
Without --model a randomly initialised ELMo of --preset size is used (speed does not depend on
the weights). Prints a table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "scripts"))

import benchlib  # noqa: E402
from elmo import ElmoBiLM  # noqa: E402
from elmo.config import preset  # noqa: E402
from tasks import ner  # noqa: E402
from tasks.cache import LayerCache  # noqa: E402
from tasks.config import resolve_config  # noqa: E402
from tasks.data import BatchMaker, Symbols  # noqa: E402
from tasks.encoder import SequenceEncoder  # noqa: E402
from tasks.train import train  # noqa: E402

def build_head(cfg, bilm, train_data, cache):
    """A fresh NER model (seed 0), its batch maker and its labels, as the training CLI builds them."""
    torch.manual_seed(0)
    labels = ner.setup(train_data, cfg)
    words = Symbols.words([x.tokens for x in train_data], cfg.head.min_word_count)
    model = ner.build(cfg, len(words), labels, bilm)
    maker = BatchMaker(words, labels, need_chars=model.encoder.needs_chars(cache is not None), cache=cache)
    return model, maker, labels


def epoch_seconds(cfg, bilm, train_data, dev_data, cache) -> tuple[list, int]:
    """(train_seconds of each of cfg.epochs epochs, minor page faults of the whole run or -1)."""
    model, maker, labels = build_head(cfg, bilm, train_data, cache)
    faults = minor_faults()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "metrics.jsonl")
        train(model, ner, cfg, ner.targets(train_data, cfg), dev_data, maker, labels, log_path=log)
        faults = minor_faults() - faults if faults >= 0 else -1
        with open(log) as f:
            return [json.loads(line)["train_seconds"] for line in f], faults


def minor_faults() -> int:
    """Minor page faults of this process so far (-1 where ``resource`` is missing, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def head_lstm_seconds(cfg, data, input_dim: int) -> tuple[float, float]:
    """(seconds, GFLOP) of the head's BiLSTM alone, forward and backward, on random inputs of the
    epoch's batch shapes (the same length-sorted batches of ``batch_size``)."""
    torch.manual_seed(0)
    lstm = SequenceEncoder(input_dim, cfg.head.hidden_dim, cfg.head.num_lstm_layers, cfg.head.dropout).train()
    lengths = sorted(len(x.tokens) for x in data)
    batches = [lengths[s : s + cfg.train.batch_size] for s in range(0, len(lengths), cfg.train.batch_size)]
    H = cfg.head.hidden_dim
    widths = [input_dim] + [2 * H] * (cfg.head.num_lstm_layers - 1)
    # per padded position, both directions: 2 FLOPs per multiply-add, forward + 2x backward
    flop_per_position = sum(2 * 2 * (w + H) * 4 * H * 3 for w in widths)
    started, flops = time.perf_counter(), 0.0
    for rows in batches:
        T = max(rows)
        mask = torch.arange(T).unsqueeze(0) < torch.tensor(rows).unsqueeze(1)
        x = torch.randn(len(rows), T, input_dim, requires_grad=True)
        lstm(x, mask).sum().backward()
        flops += flop_per_position * len(rows) * T
    return time.perf_counter() - started, flops / 1e9


# -- the phases of the real training step, from torch.profiler --------------------------------------
FORWARD_RANGES = (("encoder", "encoder fwd"), ("lstm", "BiLSTM fwd"))  # head attribute -> phase
PHASES = ("batch", "encoder fwd", "BiLSTM fwd", "output+CRF fwd", "zero_grad", "output+CRF bwd", "BiLSTM bwd",
          "encoder bwd", "clip", "Adam")
_BACKWARD = "autograd::engine::evaluate_function: "


class _BatchRanges:
    """A BatchMaker whose training batches are fetched inside a ``record_function("batch")`` range
    (at most ``limit`` of them per call, 0: all); everything else is the wrapped maker's. A training
    step is then the time from one fetch to the next, and the last fetch (the one that finds no batch)
    ends the last step."""

    def __init__(self, maker, limit: int = 0) -> None:
        self._maker, self._limit = maker, limit

    def __getattr__(self, name):
        return getattr(self._maker, name)

    def batches(self, instances, batch_size, *args, **kwargs):
        batches = self._maker.batches(instances, batch_size, *args, **kwargs)
        return batches if not kwargs.get("with_targets", True) else self._ranged(iter(batches))

    def _ranged(self, batches):
        from torch.profiler import record_function

        n = 0
        while True:
            with record_function("batch"):
                batch = next(batches, None) if not self._limit or n < self._limit else None
            if batch is None:
                return
            n += 1
            yield batch


def _module_range(module, name: str) -> list:
    """Forward hooks that run ``module``'s forward inside ``record_function(name)``; returns the handles."""
    from torch.profiler import record_function

    open_ranges = []

    def enter(*_):
        open_ranges.append(record_function(name).__enter__())

    def leave(*_):
        open_ranges.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def _enclosing_phase(event, forward_names) -> str | None:
    while event is not None:
        if event.name in forward_names:
            return event.name
        if event.name == "loss fwd":
            return "output+CRF fwd"
        event = event.cpu_parent
    return None


def step_phases(events) -> dict:
    """Milliseconds of each phase summed over the profiled training steps, from the profiler's events.

    The steps are the intervals between consecutive "batch" ranges (see ``_BatchRanges``). Every
    top-level event inside a step is put in one phase: the "batch" range; the "loss fwd" range
    (``model.loss``) split into the encoder's and the BiLSTM's ranges and the rest ("output+CRF
    fwd": dropout, output layer, CRF, the mean); torch.optim's own "Optimizer.zero_grad" and
    "Optimizer.step" ranges; each backward function ("autograd::engine::evaluate_function: ...") in
    the phase of the forward operation that created it (matched by sequence number), gradient
    accumulation and functions without a forward match in the phase of the backward function before
    them; "clip" for the operations between the last backward function and the optimizer step. The
    rest ("other": moving the batch to the device, the scalar-mix penalty's forward, the gradient
    seed, reading the loss for the log, the progress bar) is the steps' time outside these.
    Returns {phase: ms} for every name in PHASES, "other", "total" (the steps' wall time) and "steps"."""
    forward_names = {name for _, name in FORWARD_RANGES}
    events = sorted(events, key=lambda e: e.time_range.start)
    fetches = [e.time_range.start for e in events if e.name == "batch"]
    if len(fetches) < 2:
        raise ValueError("no profiled training step: the profile has fewer than two batch fetches")
    seq_phase = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD) and not e.name.endswith("Backward0"):
            phase = _enclosing_phase(e, forward_names)
            if phase is not None:
                seq_phase.setdefault(e.sequence_nr, phase.replace(" fwd", " bwd"))
    us = dict.fromkeys(PHASES, 0.0)
    start, end = fetches[0], fetches[-1]
    step, bwd_phase, pending = -1, None, 0.0  # pending: time after a backward function, not yet placed
    for e in events:
        t0 = e.time_range.start
        if e.cpu_parent is not None or not start <= t0 < end:
            continue
        while step + 1 < len(fetches) and fetches[step + 1] <= t0:  # a new step
            step, bwd_phase, pending = step + 1, None, 0.0
        took, name = e.time_range.elapsed_us(), e.name
        if name == "batch":
            us["batch"] += took
        elif name == "loss fwd":
            inner = dict.fromkeys(forward_names, 0.0)
            stack = list(e.cpu_children)
            while stack:
                child = stack.pop()
                if child.name in inner:
                    inner[child.name] += child.time_range.elapsed_us()
                else:
                    stack.extend(child.cpu_children)
            for n, v in inner.items():
                us[n] += v
            us["output+CRF fwd"] += took - sum(inner.values())
        elif name.startswith("Optimizer.zero_grad"):
            us["zero_grad"] += took
        elif name.startswith(_BACKWARD):
            if pending and bwd_phase:  # work between two backward functions is the pass's
                us[bwd_phase] += pending
            pending = 0.0
            bwd_phase = seq_phase.get(e.sequence_nr, bwd_phase)
            if bwd_phase:
                us[bwd_phase] += took
        elif name.startswith("Optimizer.step"):
            us["clip"] += pending  # between the backward pass and the optimizer step
            us["Adam"] += took
            bwd_phase, pending = None, 0.0
        elif bwd_phase is not None:
            pending += took
    ms = {k: v / 1000.0 for k, v in us.items()}
    ms["total"] = (end - start) / 1000.0
    ms["other"] = ms["total"] - sum(ms[p] for p in PHASES)  # everything not in a named phase
    ms["steps"] = len(fetches) - 1
    return ms


def phase_seconds(cfg, bilm, train_data, cache, max_batches: int = 0, trace: str | None = None) -> dict:
    """One more cached epoch of ``tasks.train.train`` (the real loop, its first ``max_batches``
    batches; 0: all) under ``torch.profiler`` with the phase ranges of ``step_phases``; returns its
    {phase: seconds} (PHASES, "other", "total"), "steps", and "epoch_s" (the loop's own
    ``train_seconds`` of the profiled epoch). ``trace``: also write the profile there (Chrome
    trace JSON, for chrome://tracing or Perfetto)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cfg = copy.deepcopy(cfg)
    cfg.train.epochs, cfg.train.patience = 1, 2
    model, maker, labels = build_head(cfg, bilm, train_data, cache)
    handles = []
    for attr, name in FORWARD_RANGES:
        if not isinstance(getattr(model, attr, None), torch.nn.Module):
            raise AttributeError(f"the NER head has no module .{attr} to time as {name!r}")
        handles += _module_range(getattr(model, attr), name)
    loss_fn = model.loss

    def loss(batch):
        with record_function("loss fwd"):
            return loss_fn(batch)

    model.loss = loss  # an instance attribute over the method, removed below
    try:
        with tempfile.TemporaryDirectory() as tmp, profile(activities=[ProfilerActivity.CPU]) as prof:
            log = os.path.join(tmp, "metrics.jsonl")
            train(model, ner, cfg, ner.targets(train_data, cfg), train_data[:1], _BatchRanges(maker, max_batches),
                  labels, log_path=log)
            with open(log) as f:
                record = json.loads(f.readline())
    finally:
        del model.loss
        for h in handles:
            h.remove()
    if trace:
        prof.export_chrome_trace(trace)
    ms = step_phases(prof.events())
    seconds = {k: (v if k == "steps" else v / 1000.0) for k, v in ms.items()}
    seconds["epoch_s"] = record["train_seconds"]
    seconds["train_loss"] = record["train_loss"]
    return seconds


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def report_lines(result: dict, args) -> list:
    """The run's report: a title line, then markdown tables (the epochs, and the phases with --phases)."""
    r = result
    lines = [f"NER epoch on {r['sentences']} sentences ({r['tokens']} tokens), ELMo {r['model']}, "
             f"{plural(r['threads'], 'thread')}, batch {r['batch_size']}", ""]
    rows = [("ELMo recomputed every batch", f"{r['recomputed_epoch_s']:.1f}", "1.0x"),
            ("cached layers", f"{r['cached_epoch_s']:.1f}", f"{r['speedup']:.1f}x"),
            ("filling the cache (once)", f"{r['cache_fill_s']:.1f}", "")]
    if r["epochs"] > 1:
        label = "epoch 2" if r["epochs"] == 2 else f"epochs 2-{r['epochs']}, mean"
        rows += [(f"recomputed, {label}", f"{r['recomputed_later_epoch_s']:.1f}", ""),
                 (f"cached, {label}", f"{r['cached_later_epoch_s']:.1f}", f"{r['speedup_later']:.1f}x")]
    if "head_lstm_s" in r:
        rows.append(("head BiLSTM alone, fwd + bwd (--breakdown)", f"{r['head_lstm_s']:.1f}",
                     f"{100 * r['head_lstm_share']:.0f}% of the cached epoch, {r['head_lstm_gflops']:.0f} GFLOP/s"))
    lines += benchlib.markdown_table(["", "s/epoch", "gain / note"], rows, right=(1,))
    if r["cached_minor_faults"] >= 0:
        lines += ["", f"Minor page faults (all {r['epochs']} epoch(s)): recomputed {r['recomputed_minor_faults']:,}, "
                      f"cached {r['cached_minor_faults']:,}."]
    if "phases_s" in r:
        ph, n = r["phases_s"], r["phases_s"]["steps"]
        per_step = 1e3 * r["cached_epoch_s"] / -(-r["sentences"] // r["batch_size"])
        lines += ["", f"Phases of the cached training step (`--phases`: torch.profiler over the first {n} steps "
                      f"of one more cached epoch of tasks.train.train; the profiled steps took "
                      f"{1e3 * ph['total'] / n:.1f} ms each, the unprofiled cached epoch "
                      f"{per_step:.1f} ms per step):", ""]
        rows = [(name, f"{1e3 * ph[name] / n:.2f}", f"{100 * ph[name] / ph['total']:.1f}%")
                for name in PHASES + ("other",)]
        rows.append(("whole step", f"{1e3 * ph['total'] / n:.2f}", "100%"))
        lines += benchlib.markdown_table(["phase", "ms per step", "share"], rows, right=(1, 2))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ELMo model folder (default: a random model of --preset size)")
    p.add_argument("--preset", default="small", help="original | medium | small | tiny (without --model)")
    p.add_argument("--train", default=os.path.join(ROOT, ".data", "conll2003", "train.txt"))
    p.add_argument("--max-sentences", type=int, default=0, help="use the first N sentences (0 = all 14,041)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs per mode; with 2 or more the later epochs' mean is reported beside the first")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the head's BiLSTM alone (forward + backward) on the epoch's batch shapes")
    p.add_argument("--phases", action="store_true",
                   help="also profile one more cached epoch (torch.profiler) and report each phase of its steps")
    p.add_argument("--phase-batches", type=int, default=100,
                   help="steps profiled by --phases (the first N of the epoch; 0: all)")
    p.add_argument("--trace", help="with --phases: also write the profile as a Chrome trace (JSON) here")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead")
    benchlib.add_output_flags(p, None)
    args = p.parse_args(argv)
    benchlib.check_output_flags(p, args)
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bilm = ElmoBiLM.from_pretrained(args.model) if args.model else ElmoBiLM(preset(args.preset))
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    # no early stopping: every mode trains all its epochs
    cfg = resolve_config("ner", {"batch_size": args.batch_size, "epochs": args.epochs,
                                 "patience": args.epochs + 1, "progress": False})
    data = ner.read(args.train, cfg)
    if args.max_sentences:
        data = data[: args.max_sentences]
    dev = data[:1]  # the loop scores a dev set after each epoch; keep it negligible
    tokens = sum(len(x.tokens) for x in data)

    cfg.elmo.cache = "none"
    recomputed_all, recomputed_faults = epoch_seconds(cfg, bilm, data, dev, None)
    cfg.elmo.cache = "memory"
    started = time.perf_counter()
    cache = LayerCache(bilm, batch_size=cfg.elmo.batch_size)
    cache.fill(x.tokens for x in data)
    fill = time.perf_counter() - started
    cached_all, cached_faults = epoch_seconds(cfg, bilm, data, dev, cache)
    recomputed, cached = recomputed_all[0], cached_all[0]
    result = {
        "model": args.model or f"random {args.preset}", "sentences": len(data), "tokens": tokens,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "epochs": args.epochs,
        "recomputed_epoch_s": recomputed, "cache_fill_s": fill, "cached_epoch_s": cached,
        "speedup": recomputed / cached, "recomputed_epochs_s": recomputed_all, "cached_epochs_s": cached_all,
        "recomputed_minor_faults": recomputed_faults, "cached_minor_faults": cached_faults,
    }
    if args.epochs > 1:
        later = [sum(x[1:]) / len(x[1:]) for x in (recomputed_all, cached_all)]
        result.update(recomputed_later_epoch_s=later[0], cached_later_epoch_s=later[1],
                      speedup_later=later[0] / later[1])
    if args.breakdown:
        input_dim = bilm.output_dim + cfg.head.word_dim + cfg.head.char_dim
        seconds, gflop = head_lstm_seconds(cfg, data, input_dim)
        result.update(head_lstm_s=seconds, head_lstm_share=seconds / cached, head_lstm_gflops=gflop / seconds)
    if args.phases:
        result["phases_s"] = phase_seconds(cfg, bilm, data, cache, args.phase_batches, args.trace)
    lines = report_lines(result, args)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))
    if args.markdown:
        section = args.section or f"tasks-{args.preset if not args.model else 'model'}-{len(data)}-t{result['threads']}"
        config = (f"NER head (CoNLL-2003 defaults), batch {args.batch_size}, {len(data):,} training sentences "
                  f"({tokens:,} tokens) from {os.path.relpath(args.train, ROOT)}, ELMo {result['model']}, "
                  f"{args.epochs} epoch(s) per mode, {plural(result['threads'], 'torch thread')}.")
        benchlib.write_section(args.markdown, section, benchlib.section_text(
            section, f"NER training epoch, ELMo recomputed vs cached ({result['model']}, "
            f"{plural(result['threads'], 'thread')})", benchlib.command_line(__file__, argv), config, lines[2:],
            threads=result["threads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
