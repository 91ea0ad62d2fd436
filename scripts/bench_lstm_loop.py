"""The LSTM's fused recurrence (elmo.kernels) against the stepped reference loop (elmo.cells.base)
in the whole training step, per recurrent regularizer, at the same commit.

    python scripts/bench_lstm_loop.py [--config ptb-char-small] [--kinds none variational semeniuta
        zoneout] [--rates 0.25 0.25 0.1] [--runs 2] [--steps 20] [--check-steps 10] [--vocab 10000]
        [--threads 1] [--set FIELD=VALUE ...] [--markdown docs/benchmarks.md]

Timing: for each regularizer, ``--runs`` fresh processes each build one ``Trainer`` (the preset's
batch, window and softmax unless ``--set`` changes them; window mode on synthetic Zipf text with
a ``--vocab``-word vocabulary), run two warm-up steps, then ``2 x --steps`` steps that switch
between the two loops in the order fused, stepped, stepped, fused, fused, ... (the loop does not
change the function, so both time the same work, and a change in the machine's load falls on
both alike). Per loop: the median wall-clock and process CPU time of a step over all runs ("CPU
ms": on a machine shared with other jobs it moves less than the wall clock) and the fastest step
(the one least slowed by other jobs); the ratios are stepped / fused.

Check: the same training from the same seed through each loop alone (``scripts/bench_pretrain.py``'s
step worker, two more fresh processes, ``--check-steps`` steps): "loss diff, step 1" is the
difference of the first step's loss (float32 rounding of the same function), "max loss diff" the
largest over all steps (it grows as the updates carry the rounding into the weights; on a chaotic
trajectory, e.g. the preset's SGD rate 1.0 on synthetic text, without bound: any rounding change
does that, another GEMM library in the same loop too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

PRETRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_pretrain.py")
KINDS = ("none", "variational", "semeniuta", "zoneout")
LOOPS = ("fused", "stepped")


def overrides(kind: str, rate: float, sets) -> list:
    regularizer = [] if kind == "none" else [f"model.bilm.recurrent_dropout_kind={kind}",
                                             f"model.bilm.recurrent_dropout={rate}"]
    return regularizer + list(sets or [])


def worker_interleaved(spec: dict) -> dict:
    """One trainer, its steps alternating between the fused and the stepped loop."""
    import torch

    from bench_pretrain import synthetic_corpus
    from elmo.lstm import Lstm
    from pretrain.batches import WindowBatcher
    from pretrain.config import pretrain_preset
    from pretrain.distributed import DistInfo
    from pretrain.lm import BidirectionalLM
    from pretrain.train import Trainer

    torch.set_num_threads(spec["threads"])
    config = pretrain_preset(spec["config"])
    for assignment in ["train.max_steps=1000000", *spec["sets"]]:
        config = config.with_override(assignment)
    rows, window, steps = config.data.batch_size, config.data.window, spec["steps"]
    table, corpus = synthetic_corpus(spec["vocab"], (4 + 2 * steps) * rows * window + 1000)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(table.vocab), config.softmax)
    batcher = WindowBatcher(corpus, table, rows, window, seed=0)
    trainer = Trainer(lm, batcher, config, 10**6, info=DistInfo(device=torch.device("cpu")))
    layers = [m for m in lm.modules() if isinstance(m, Lstm)]
    fused = Lstm.__dict__["runs_fused"]  # the property; False on the class forces the stepped loop
    times: dict = {loop: {"wall": [], "cpu": []} for loop in LOOPS}
    try:
        for i in range(2 + 2 * steps):
            loop = LOOPS[((i + 1) // 2) % 2]  # fused, stepped, stepped, fused, fused, ...
            Lstm.runs_fused = fused if loop == "fused" else False
            if not layers or any(bool(m.runs_fused) != (loop == "fused") for m in layers):
                raise RuntimeError(f"the {loop} loop is not the one that runs")
            batch = batcher.next_batch()
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step(batch)
            if i >= 2:
                times[loop]["wall"].append(time.perf_counter() - t0)
                times[loop]["cpu"].append(time.process_time() - c0)
    finally:
        Lstm.runs_fused = fused
    return {"tokens": rows * window, "times": times}


def check_losses(config: str, sets: list, args) -> tuple:
    """(first step's, largest) loss difference of the two loops trained alone from one seed."""
    losses = [benchlib.run_worker(PRETRAIN_SCRIPT, {
        "kind": "train_step", "config": config, "loop": loop, "sets": sets, "vocab": args.vocab,
        "threads": args.threads, "steps": args.check_steps - 1, "device": "cpu"})["losses"] for loop in LOOPS]
    diffs = [abs(a - b) for a, b in zip(*losses)]
    return diffs[0], max(diffs)


def compare(config: str, kind: str, rate: float, args) -> dict:
    sets = overrides(kind, rate, args.set)
    pooled = {loop: {"wall": [], "cpu": []} for loop in LOOPS}
    tokens = None
    for _ in range(args.runs):
        result = benchlib.run_worker(__file__, {"config": config, "sets": sets, "vocab": args.vocab,
                                                "threads": args.threads, "steps": args.steps})
        tokens = result["tokens"]
        for loop in LOOPS:
            for clock in ("wall", "cpu"):
                pooled[loop][clock] += result["times"][loop][clock]
    ms = {(loop, clock): 1000 * statistics.median(pooled[loop][clock]) for loop in LOOPS for clock in ("wall", "cpu")}
    fastest = {loop: 1000 * min(pooled[loop]["wall"]) for loop in LOOPS}
    first, largest = check_losses(config, sets, args) if args.check_steps else (None, None)
    return {"kind": kind, "rate": None if kind == "none" else rate, "tokens": tokens, "ms": ms,
            "fastest": fastest, "first_diff": first, "loss_diff": largest}


HEADER = ["regularizer", "rate", "fused ms/step", "stepped ms/step", "fused tok/s", "stepped tok/s",
          "stepped / fused", "fastest step stepped / fused", "fused CPU ms", "stepped CPU ms",
          "CPU stepped / fused", "loss diff, step 1", "max loss diff"]


def row(r: dict) -> list:
    ms, tok = r["ms"], r["tokens"]
    return [r["kind"], "-" if r["rate"] is None else f"{r['rate']:g}",
            f"{ms['fused', 'wall']:.0f}", f"{ms['stepped', 'wall']:.0f}",
            f"{1000 * tok / ms['fused', 'wall']:,.0f}", f"{1000 * tok / ms['stepped', 'wall']:,.0f}",
            f"{ms['stepped', 'wall'] / ms['fused', 'wall']:.3f}x",
            f"{r['fastest']['stepped'] / r['fastest']['fused']:.3f}x",
            f"{ms['fused', 'cpu']:.0f}", f"{ms['stepped', 'cpu']:.0f}",
            f"{ms['stepped', 'cpu'] / ms['fused', 'cpu']:.3f}x",
            benchlib.fmt(r["first_diff"], ".1e"), benchlib.fmt(r["loss_diff"], ".1e")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ptb-char-small", help="a pretraining preset (pretrain.config)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS[1:]), choices=KINDS)
    p.add_argument("--rates", nargs="+", type=float, default=None,
                   help="one rate per kind (default 0.25, zoneout 0.1)")
    p.add_argument("--runs", type=int, default=2, help="fresh processes per kind, their steps pooled")
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop and run")
    p.add_argument("--check-steps", type=int, default=10,
                   help="steps of the loss check of each loop alone (0: no check)")
    p.add_argument("--vocab", type=int, default=10_000, help="softmax vocabulary of the synthetic text")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a config override for every measurement (repeatable)")
    benchlib.add_output_flags(p, "lstm-loop")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker_interleaved(json.loads(args.worker))))
        return 0
    benchlib.check_output_flags(p, args)
    rates = args.rates or [0.1 if k == "zoneout" else 0.25 for k in args.kinds]
    if len(rates) != len(args.kinds):
        p.error(f"--rates: {len(rates)} rates for {len(args.kinds)} kinds; give one per kind")
    if args.runs < 1 or args.steps < 1 or args.check_steps < 0 or args.check_steps == 1:
        p.error("--runs and --steps must be at least 1, --check-steps 0 (no check) or at least 2")
    from pretrain.config import PRETRAIN_PRESETS

    if args.config not in PRETRAIN_PRESETS:
        p.error(f"--config {args.config!r}: expected one of {', '.join(PRETRAIN_PRESETS)}")

    print("| " + " | ".join(HEADER) + " |")
    print("|---|---|" + "---:|" * (len(HEADER) - 2))
    results = []
    for kind, rate in zip(args.kinds, rates):
        results.append(compare(args.config, kind, rate, args))
        print("| " + " | ".join(row(results[-1])) + " |", flush=True)
    if args.markdown:
        sets = f"; {', '.join(args.set)}" if args.set else ""
        config = (f"preset {args.config} ({results[0]['tokens']} tokens a step{sets}), Trainer.train_step "
                  f"(forward, loss, backward, clipping, update), {args.vocab:,}-word synthetic vocabulary; "
                  f"{args.runs} fresh processes per regularizer, each {args.steps} steps per loop after two "
                  f"warm-up steps, the loops alternating (f s s f f ...); loss check over "
                  f"{args.check_steps or 'no'} steps of each loop alone.")
        body = benchlib.markdown_table(HEADER, [row(r) for r in results], right=tuple(range(2, len(HEADER))))
        benchlib.write_section(args.markdown, args.section, benchlib.section_text(
            args.section, "The LSTM's fused recurrence against the stepped loop, per regularizer",
            benchlib.command_line(__file__, argv), config, body, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
