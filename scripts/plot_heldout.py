"""Held-out perplexity per epoch of one or more pretraining runs: a PNG and a markdown table.

    python scripts/plot_heldout.py /work/runs/ptb-char-small [more runs] --out docs/ptb_heldout.png \
        [--reference 92.3 "Kim et al. 2016, LSTM-Char-Small (test)"] [--steps-per-epoch 1389] \
        [--quick RUN-quick.jsonl ...] [--extrapolate 25]

Reads each run's ``metrics.jsonl`` (the held-out evaluations, and the ``epoch`` records that
``train.eval_per_epoch`` writes; ``--steps-per-epoch`` for a run that has not finished an epoch
yet). Prints, per run, the epoch, the step, the forward (and backward) held-out perplexity, the
learning rate that followed. ``--quick`` adds points from JSON lines of ``elmo-pretrain evaluate
--json`` with a ``step`` key (e.g. each checkpoint on a part of the held-out text), drawn as their
own series. ``--extrapolate E`` fits log perplexity = a + b log epoch to each series' points
after the first quarter epoch and prints the fitted value at epoch E: a power law at a constant
learning rate, indicative only (the plateau schedule's halvings usually bend the curve down).
matplotlib is needed for the PNG only (``pip install elmo-pytorch[plot]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime
from typing import Optional


def read_run(run_dir: str, steps_per_epoch: Optional[int] = None) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is it an elmo-pretrain run directory?)")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    epochs = [r for r in records if "epoch" in r and "lr_next" in r]
    if steps_per_epoch is None and epochs:
        steps_per_epoch = epochs[0]["step"] // epochs[0]["epoch"]
    if steps_per_epoch is None:
        raise ValueError(f"{run_dir}: no epoch has ended yet; pass --steps-per-epoch")
    lr_after = {r["step"]: r["lr_next"] for r in epochs}
    held = [r for r in records if "heldout_forward_ppl" in r]
    rows = []
    for r in held:
        rows.append({"epoch": r["step"] / steps_per_epoch, "step": r["step"],
                     "forward_ppl": r["heldout_forward_ppl"],
                     "backward_ppl": r.get("heldout_backward_ppl"),
                     "lr_next": lr_after.get(r["step"]), "time": r.get("time")})
    return {"name": os.path.basename(os.path.normpath(run_dir)), "rows": rows,
            "steps_per_epoch": steps_per_epoch}


def read_quick(path: str, steps_per_epoch: int) -> dict:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rows = [{"epoch": r["step"] / steps_per_epoch, "step": r["step"], "forward_ppl": r["forward_ppl"],
             "backward_ppl": r.get("backward_ppl"), "lr_next": None} for r in records]
    rows.sort(key=lambda r: r["step"])
    name = os.path.basename(path).rsplit(".", 1)[0]
    return {"name": f"{name} (checkpoints on a part)", "rows": rows, "steps_per_epoch": steps_per_epoch}


def power_law(rows: list, at_epoch: float) -> Optional[tuple]:
    """(a, b, fitted perplexity at ``at_epoch``) of log ppl = a + b log epoch (least squares)."""
    pts = [(math.log(r["epoch"]), math.log(r["forward_ppl"])) for r in rows if r["epoch"] >= 0.25]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    return a, b, math.exp(a + b * math.log(at_epoch))


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def table(run: dict) -> str:
    lines = [f"{run['name']} ({run['steps_per_epoch']} steps per epoch)", "",
             "| epoch | step | held-out ppl (forward) | held-out ppl (backward) | lr after |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for r in run["rows"]:
        lines.append(f"| {r['epoch']:.2f} | {r['step']} | {_fmt(r['forward_ppl'])} | "
                     f"{_fmt(r['backward_ppl'])} | {_fmt(r['lr_next'])} |")
    return "\n".join(lines)


def plot(runs: list, out: str, references: list) -> bool:
    from pretrain.plot import pyplot, save_figure  # Agg backend; atomic PNG write, figure closed

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        rows = [r for r in run["rows"] if r["epoch"] > 0]  # the untrained start would set the scale
        ax.plot([r["epoch"] for r in rows], [r["forward_ppl"] for r in rows], "o-",
                label=f"{run['name']} (forward)")
    for value, label in references:
        ax.axhline(value, color="gray", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], value, f" {label}: {value:g}", va="bottom", fontsize=8, color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out perplexity (full softmax)")
    ax.set_title("held-out perplexity per epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="the PNG to write (default: none, the table only)")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--reference", nargs=2, action="append", default=[], metavar=("PPL", "LABEL"),
                   help="a horizontal line, e.g. 92.3 'Kim et al. 2016 (test)'")
    p.add_argument("--quick", nargs="+", default=[], metavar="JSONL",
                   help="extra points: evaluate --json lines with a step key (steps per epoch of the first run)")
    p.add_argument("--extrapolate", type=float, metavar="EPOCHS", help="print a power-law fit's value there")
    args = p.parse_args(argv)
    try:
        runs = [read_run(r, args.steps_per_epoch) for r in args.runs]
        runs += [read_quick(q, runs[0]["steps_per_epoch"]) for q in args.quick]
        references = [(float(v), label) for v, label in args.reference]
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_heldout: error: {e}", file=sys.stderr)
        return 2
    print(f"# held-out perplexity per epoch ({datetime.now():%Y-%m-%d %H:%M})\n")
    for run in runs:
        print(table(run) + "\n")
        fit = power_law(run["rows"], args.extrapolate) if args.extrapolate else None
        if fit:
            print(f"power-law fit of {run['name']}: ppl = {math.exp(fit[0]):.1f} x epoch^{fit[1]:.3f}; "
                  f"at epoch {args.extrapolate:g}: {fit[2]:.1f} (constant rate; indicative only)\n")
    if args.out and plot(runs, args.out, references):
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
