"""Recurrent cells on equal terms: training speed and held-out perplexity on the BBC News corpus.

    python scripts/bench_cells.py [--cells lstm gru sru ...] [--budget-tokens 2000000]
                                  [--match params|hidden] [--preset tiny] [--threads 2]
                                  [--out runs/bench_cells] [--plot docs/cells_bench.png]

For every cell, one ``elmo-pretrain`` run (pretrain.run.run) of the same preset, data, batches,
optimizer and token budget; only ``model.bilm.cell`` and ``model.bilm.dim`` change:

* ``--match params`` (default): each cell's ``dim`` (H) is the largest whose biLM has no more
  parameters than the LSTM's at the preset's dim, so every model has (about) the same size;
* ``--match hidden``: every cell keeps the preset's dim (the "same size" of the SRU and QRNN
  papers' speed claims; those cells then have fewer parameters).

Reported per cell: H, biLM parameters, training tokens/s (median over steps of batch tokens /
step time, evaluation excluded), the speed relative to the LSTM, and the held-out perplexity
(full softmax, forward, backward and their geometric mean) after the budget. The held-out text is
the same 2% of lines for every cell. Each cell runs in its own process, one after the other; the
table is printed (markdown) and written with the raw results to ``--out``, and plotted to
``--plot``. Wrap timed runs in ``flock /tmp/bench.lock`` on a shared machine.

``--layers-only`` times just the recurrent layers instead (no data, no training run): forward and
backward of each cell's biLM stack on random inputs of the preset's batch x window, the median of
``--steps`` after two warm-ups. The whole training step also runs the character CNN, the softmax
and the optimizer, which cost the same for every cell; this shows the cells' own speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "scripts"))

import benchlib  # noqa: E402
from elmo.bilm import BiLM  # noqa: E402
from elmo.config import CELLS  # noqa: E402


def bilm_parameters(bilm_config) -> int:
    return sum(p.numel() for p in BiLM(bilm_config).parameters())


def matched_dim(bilm_config, cell: str, target: int) -> int:
    """The largest H whose biLM with ``cell`` has at most ``target`` parameters."""
    def size(h: int) -> int:
        return bilm_parameters(dataclasses.replace(bilm_config, cell=cell, dim=h))

    lo, hi = 1, 2 * bilm_config.dim
    while size(hi) <= target:
        hi *= 2
    while lo < hi:  # parameters grow with H
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= target else (lo, mid - 1)
    return lo


def cell_config(args: argparse.Namespace, cell: str):
    """The pretraining config of one cell's run."""
    from pretrain.config import pretrain_preset

    config = pretrain_preset(args.preset)
    bilm = dataclasses.replace(config.model.bilm, transition_depth=args.rhn_depth if cell == "rhn" else 1)
    if args.match == "params" and cell != "lstm":
        target = bilm_parameters(dataclasses.replace(bilm, cell="lstm", transition_depth=1))
        bilm = dataclasses.replace(bilm, cell=cell, dim=matched_dim(bilm, cell, target))
    else:
        bilm = dataclasses.replace(bilm, cell=cell)
    config.model.bilm = bilm
    d, t = config.data, config.train
    d.tokenizer, d.heldout_fraction, d.eval_max_tokens = "punct", 0.02, args.eval_tokens
    if args.batch_size:
        d.batch_size = args.batch_size
    if args.window:
        d.window = args.window
    t.max_tokens, t.max_steps, t.epochs = args.budget_tokens, None, None
    t.seed, t.threads, t.progress = args.seed, args.threads, False
    t.eval_every = t.checkpoint_every = 10 ** 9  # only the final evaluation; no checkpoints
    t.log_every = 50
    return config


def run_one(args: argparse.Namespace, cell: str) -> dict:
    """Train one cell in this process; returns its row of the table."""
    import logging

    from pretrain.run import run

    logging.basicConfig(level=logging.WARNING)
    config = cell_config(args, cell)
    out = os.path.join(args.out, cell)
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)  # a fresh run every time
    stamps = []  # (time, tokens) after every step

    def callback(trainer, metrics):
        stamps.append((time.perf_counter(), metrics["batch_tokens"]))
        return False

    summary = run(config, [args.data], out, callback=callback)
    rates = [tok / (t1 - t0) for (t0, _), (t1, tok) in zip(stamps, stamps[1:])]
    held = summary.get("heldout", {})
    fwd, bwd = held.get("forward_perplexity", float("nan")), held.get("backward_perplexity", float("nan"))
    return {"cell": cell, "dim": config.model.bilm.dim, "transition_depth": config.model.bilm.transition_depth,
            "bilm_parameters": bilm_parameters(config.model.bilm), "steps": summary["step"],
            "tokens": summary["tokens"], "tokens_per_s": statistics.median(rates) if rates else float("nan"),
            "forward_ppl": fwd, "backward_ppl": bwd, "ppl": math.sqrt(fwd * bwd),
            "unigram_ppl": held.get("unigram_perplexity_forward_targets", float("nan")),
            "heldout_tokens": held.get("tokens_per_direction"), "seconds": summary["seconds"]}


def layers_only(args: argparse.Namespace) -> str:
    """Forward + backward of each cell's recurrent layers alone; returns a markdown table."""
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for cell in args.cells:
        config = cell_config(args, cell)
        torch.manual_seed(args.seed)
        bilm = BiLM(config.model.bilm).train()
        B, T, P = config.data.batch_size, config.data.window, config.model.bilm.projection_dim
        x = torch.randn(B, T, P, requires_grad=True)
        mask = torch.ones(B, T, dtype=torch.bool)
        times = []
        for _ in range(2 + args.steps):
            started = time.perf_counter()
            layers, _ = bilm(x, mask)
            sum(layer.sum() for layer in layers).backward()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times[2:])
        rows.append((cell, config.model.bilm.dim, bilm_parameters(config.model.bilm), B * T / seconds, seconds))
    lstm = next((r[3] for r in rows if r[0] == "lstm"), None)
    lines = [f"recurrent layers only (forward + backward), batch {B} x {T}, {args.threads} threads", "",
             "| cell | H | biLM params | ms per batch | tok/s | vs LSTM |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for cell, dim, params, rate, seconds in rows:
        speed = f"{rate / lstm:.2f}x" if lstm else "-"
        lines.append(f"| {cell} | {dim} | {params:,} | {seconds * 1000:.1f} | {rate:,.0f} | {speed} |")
    return "\n".join(lines)


def table(rows: list) -> str:
    lstm = next((r for r in rows if r["cell"] == "lstm"), None)
    cells = [(r["cell"] + (f" (L={r['transition_depth']})" if r["cell"] == "rhn" else ""), r["dim"],
              f"{r['bilm_parameters']:,}", f"{r['tokens_per_s']:,.0f}",
              f"{r['tokens_per_s'] / lstm['tokens_per_s']:.2f}x" if lstm else "-",
              f"{r['forward_ppl']:.1f} / {r['backward_ppl']:.1f}", f"{r['ppl']:.1f}") for r in rows]
    return "\n".join(benchlib.markdown_table(
        ["cell", "H", "biLM params", "train tok/s", "vs LSTM", "held-out ppl fwd / bwd", "geo. mean"], cells,
        right=range(1, 7)))


def plot(rows: list, path: str, title: str) -> None:
    from pretrain.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    names = [r["cell"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax1.set_ylabel("training tokens / s")
    ax2.bar(names, [r["ppl"] for r in rows], color="tab:orange")
    ax2.set_ylabel("held-out perplexity (geometric mean fwd/bwd)")
    finite = [r["ppl"] for r in rows if math.isfinite(r["ppl"])]
    if finite:  # bars from 0 would hide the differences
        ax2.set_ylim(0.9 * min(finite), 1.05 * max(finite))
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--preset", default="tiny", help="model and training preset (default tiny)")
    p.add_argument("--match", choices=["params", "hidden"], default="params")
    p.add_argument("--budget-tokens", type=int, default=2_000_000, help="training tokens per cell")
    p.add_argument("--rhn-depth", type=int, default=3, help="recurrence depth L of the RHN")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the preset's)")
    p.add_argument("--window", type=int, help="tokens per row (default: the preset's)")
    p.add_argument("--eval-tokens", type=int, default=20_000, help="cap on held-out tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.path.join(ROOT, ".data", "bbcnews"),
                   help="training text (default: the BBC News corpus from scripts/get_data.py)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_cells"))
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "cells_bench.png"))
    p.add_argument("--layers-only", action="store_true",
                   help="time only the recurrent layers (forward + backward), no training run")
    p.add_argument("--steps", type=int, default=10, help="timed batches per cell with --layers-only")
    benchlib.add_output_flags(p, None)
    p.add_argument("--one", choices=CELLS, help=argparse.SUPPRESS)  # internal: run one cell here
    return p


def write_markdown(args, argv, title: str, lines: list) -> None:
    """--markdown: the table as a section of that file (cells-MATCH, or cells-layers-MATCH)."""
    section = args.section or f"cells-{'layers-' if args.layers_only else ''}{args.match}"
    config = (f"cells {', '.join(args.cells)}, preset {args.preset}, "
              f"{'equal parameters' if args.match == 'params' else 'equal H'}, seed {args.seed}"
              + ("" if args.layers_only else f", {args.budget_tokens:,} training tokens per cell, held-out "
                 f"perplexity on at most {args.eval_tokens:,} tokens of {os.path.relpath(args.data, ROOT)}") + ".")
    benchlib.write_section(args.markdown, section, benchlib.section_text(
        section, title, benchlib.command_line(__file__, argv), config, lines, threads=args.threads))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    benchlib.check_output_flags(parser, args)
    if args.layers_only:
        text = layers_only(args)
        print(text)
        if args.markdown:
            title, _, table_lines = text.partition("\n")
            write_markdown(args, argv, title[0].upper() + title[1:], table_lines.strip("\n").split("\n"))
        return 0
    if not os.path.exists(args.data):
        print(f"bench_cells: no training data at {args.data}; run: python scripts/get_data.py",
              file=sys.stderr)
        return 2
    if args.one:
        row = run_one(args, args.one)
        with open(os.path.join(args.out, args.one, "bench_row.json"), "w", encoding="utf-8") as f:
            json.dump(row, f)
        return 0
    rows = []
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    for cell in args.cells:
        t0 = time.time()
        rc = subprocess.call([sys.executable, os.path.abspath(__file__), *base, "--one", cell])
        if rc != 0:
            print(f"bench_cells: the {cell} run failed (exit {rc})", file=sys.stderr)
            return rc
        with open(os.path.join(args.out, cell, "bench_row.json"), encoding="utf-8") as f:
            rows.append(json.load(f))
        r = rows[-1]
        print(f"{cell}: H={r['dim']} {r['tokens_per_s']:,.0f} tok/s, ppl {r['ppl']:.1f} "
              f"({time.time() - t0:.0f} s)", file=sys.stderr)
    text = table(rows)
    title = (f"{args.preset} preset, {args.budget_tokens:,} training tokens per cell, "
             f"{'equal parameters' if args.match == 'params' else 'equal H'}, {args.threads} threads")
    print(f"\n{title}\n\n{text}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_cells.json"), "w", encoding="utf-8") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "one"}, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "bench_cells.md"), "w", encoding="utf-8") as f:
        f.write(f"{title}\n\n{text}\n")
    if args.plot:
        plot(rows, args.plot, title)
    if args.markdown:
        write_markdown(args, argv, f"Recurrent cells: {title}", text.split("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
