"""The LSTM's fused recurrence (elmo.kernels) against the stepped reference loop (elmo.cells.base)
in the whole training step, per recurrent regularizer, at the same commit.

    python scripts/bench_lstm_loop.py [--config ptb-char-small] [--kinds none variational semeniuta
        zoneout] [--rates 0.25 0.25 0.1] [--pairs 4] [--steps 10] [--vocab 10000] [--threads 1]
        [--set FIELD=VALUE ...] [--markdown docs/benchmarks.md]

Each measurement is ``Trainer.train_step`` of ``scripts/bench_pretrain.py`` (window mode, the
preset's batch, window and softmax unless ``--set`` changes them; synthetic Zipf text with a
``--vocab``-word vocabulary) in a fresh process: median wall-clock ms of ``--steps`` steps after
one warm-up, and the median process CPU time of a step ("CPU ms": on a machine shared with other
jobs it moves less than the wall clock). The two loops run in ``--pairs`` interleaved pairs (fused
first, then stepped first, ...), so a change in the machine's load falls on both alike; a ratio is
the median of the pairs' stepped / fused times ("per pair": the wall-clock ones). Both loops start from the same weights and batches with the same seed, so
they compute the same losses: "loss diff, step 1" is the largest difference of the first step's
loss between the two (float32 rounding of the same function), "max loss diff" that of any step
(it grows with the steps as the updates carry the rounding into the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_pretrain.py")
KINDS = ("none", "variational", "semeniuta", "zoneout")


def measure(config: str, kind: str, rate: float, loop: str, args) -> dict:
    sets = list(args.set or [])
    if kind != "none":
        sets = [f"model.bilm.recurrent_dropout_kind={kind}", f"model.bilm.recurrent_dropout={rate}", *sets]
    return benchlib.run_worker(SCRIPT, {"kind": "train_step", "config": config, "loop": loop, "sets": sets,
                                        "vocab": args.vocab, "threads": args.threads, "steps": args.steps,
                                        "device": "cpu"})


def compare(config: str, kind: str, rate: float, args) -> dict:
    """``--pairs`` interleaved pairs of fused and stepped measurements of one regularizer."""
    runs: dict = {"fused": [], "stepped": []}
    for pair in range(args.pairs):
        for loop in (("fused", "stepped") if pair % 2 == 0 else ("stepped", "fused")):
            runs[loop].append(measure(config, kind, rate, loop, args))
    if not all(all(r["fused"]) for r in runs["fused"]) or any(any(r["fused"]) for r in runs["stepped"]):
        raise RuntimeError(f"{kind}: the fused side did not run the fused loop (or the stepped side did)")
    ratios = [s["ms_per_step"] / f["ms_per_step"] for f, s in zip(runs["fused"], runs["stepped"])]
    cpu_ratios = [s["cpu_ms"] / f["cpu_ms"] for f, s in zip(runs["fused"], runs["stepped"])]
    loss_diff = max(abs(a - b) for f, s in zip(runs["fused"], runs["stepped"])
                    for a, b in zip(f["losses"], s["losses"]))
    first_diff = max(abs(f["losses"][0] - s["losses"][0]) for f, s in zip(runs["fused"], runs["stepped"]))
    return {"kind": kind, "rate": rate if kind != "none" else None, "tokens": runs["fused"][0]["tokens"],
            "fused_ms": statistics.median(r["ms_per_step"] for r in runs["fused"]),
            "stepped_ms": statistics.median(r["ms_per_step"] for r in runs["stepped"]),
            "ratio": statistics.median(ratios), "ratios": ratios,
            "fused_cpu_ms": statistics.median(r["cpu_ms"] for r in runs["fused"]),
            "stepped_cpu_ms": statistics.median(r["cpu_ms"] for r in runs["stepped"]),
            "cpu_ratio": statistics.median(cpu_ratios), "first_diff": first_diff, "loss_diff": loss_diff}


def row(r: dict) -> list:
    tok = r["tokens"]
    return [r["kind"], "-" if r["rate"] is None else f"{r['rate']:g}", f"{r['fused_ms']:.0f}",
            f"{r['stepped_ms']:.0f}", f"{1000 * tok / r['fused_ms']:,.0f}", f"{1000 * tok / r['stepped_ms']:,.0f}",
            f"{r['ratio']:.3f}x", " ".join(f"{x:.2f}" for x in r["ratios"]), f"{r['fused_cpu_ms']:.0f}",
            f"{r['stepped_cpu_ms']:.0f}", f"{r['cpu_ratio']:.3f}x", f"{r['first_diff']:.1e}",
            f"{r['loss_diff']:.1e}"]


HEADER = ["regularizer", "rate", "fused ms/step", "stepped ms/step", "fused tok/s", "stepped tok/s",
          "stepped / fused", "per pair", "fused CPU ms", "stepped CPU ms", "CPU stepped / fused",
          "loss diff, step 1", "max loss diff"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ptb-char-small", help="a pretraining preset (pretrain.config)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS[1:]), choices=KINDS)
    p.add_argument("--rates", nargs="+", type=float, default=None,
                   help="one rate per kind (default 0.25, zoneout 0.1)")
    p.add_argument("--pairs", type=int, default=4, help="interleaved fused/stepped pairs per kind")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement, after one warm-up")
    p.add_argument("--vocab", type=int, default=10_000, help="softmax vocabulary of the synthetic text")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a config override for every measurement (repeatable)")
    benchlib.add_output_flags(p, "lstm-loop")
    args = p.parse_args(argv)
    benchlib.check_output_flags(p, args)
    rates = args.rates or [0.1 if k == "zoneout" else 0.25 for k in args.kinds]
    if len(rates) != len(args.kinds):
        p.error(f"--rates: {len(rates)} rates for {len(args.kinds)} kinds; give one per kind")
    if args.pairs < 1 or args.steps < 1:
        p.error("--pairs and --steps must be at least 1")
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
        tokens = results[0]["tokens"]
        config = (f"preset {args.config} ({tokens} tokens a step{'; ' + ', '.join(args.set) if args.set else ''}), "
                  f"Trainer.train_step (forward, loss, backward, clipping, update), {args.vocab:,}-word "
                  f"synthetic vocabulary; median of {args.steps} steps after a warm-up, each measurement a "
                  f"fresh process, {args.pairs} interleaved fused/stepped pairs per regularizer.")
        body = benchlib.markdown_table(HEADER, [row(r) for r in results], right=tuple(range(2, len(HEADER))))
        benchlib.write_section(args.markdown, args.section, benchlib.section_text(
            args.section, "The LSTM's fused recurrence against the stepped loop, per regularizer",
            benchlib.command_line(__file__, argv), config, body, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
