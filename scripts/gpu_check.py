"""The GPU check of issue 17: tests, training-step grid, featurizer; one table (``gpu_check.sh``).

    python scripts/gpu_check.py [--dry-run] [--out DIR] [--budget SECONDS] [--markdown docs/benchmarks.md]

In order, while the time budget lasts (each later item is skipped, with a row that says so):

1. ``tests/test_cuda.py`` with pytest (when pytest is installed), else a built-in check: three
   training steps under ``torch.cuda.set_sync_debug_mode("error")`` and the tiny preset's layers
   on the GPU against the CPU.
2. ``bench_pretrain.py``'s sync-free training step in window mode (20 tokens per row, a
   100,000-word vocabulary, 8,192 sampled negatives, bf16) for ORIGINAL and SMALL at 128, 256 and
   512 rows, eager; then compiled (``train.compile``) for ORIGINAL at 512 rows: tokens/s, ms per
   step, peak GPU memory, model FLOPs utilisation against 790 TFLOP/s (dense bf16, H200).
3. ``bench_embed.py``'s featurizer on the GPU (ORIGINAL and SMALL, bfloat16 and float32).

Every measurement runs in its own process. The table is printed and written to
``DIR/gpu_check.md`` (DIR: --out, else $OUT, else runs/gpu_check) with the raw numbers in
``gpu_check.json`` (and, with ``--markdown FILE``, as a section of FILE). ``--dry-run`` runs the same logic on the CPU with the tiny preset and small
sizes (seconds, not minutes). Nothing here imports ``datasets``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

sys.path.insert(0, ROOT)
import bench_embed  # noqa: E402
import bench_pretrain  # noqa: E402

COLUMNS = ["part", "size", "shape", "mode", "tokens/s", "ms/step", "peak MiB", "MFU", "note"]


def plan(dry: bool) -> dict:
    """What to run: the real grid on CUDA, or tiny sizes on the CPU for --dry-run."""
    if dry:
        return {"device": "cpu", "precision": "fp32", "train_configs": ["tiny"], "rows": [4, 8],
                "compile_rows": {}, "window": 6, "vocab": 2000, "samples": 64, "steps": 2, "warmup": 1,
                "embed_configs": ["tiny"], "embed_dtypes": ["float32"], "sentences": 64, "batch": 16,
                "tests": ["-k", "tiny_preset_forward"], "peak_tflops": 790.0, "threads": 1}
    return {"device": "cuda", "precision": "bf16", "train_configs": ["original", "small"],
            "rows": [128, 256, 512], "compile_rows": {"original": [512]}, "window": 20,
            "vocab": 100_000, "samples": 8192, "steps": 20, "warmup": 3,
            "embed_configs": ["original", "small"], "embed_dtypes": ["bfloat16", "float32"],
            "sentences": 20000, "batch": 256, "tests": [], "peak_tflops": 790.0, "threads": 4}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_tests(p: dict, budget: Budget) -> dict:
    """tests/test_cuda.py under pytest: a row with the counts (or the built-in check)."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        if p["device"] == "cpu":
            r = worker_selfcheck_in_process(p)
        else:  # in a fresh process, so that the sync debug mode and CUDA state stay out of this one
            out = benchlib.run_worker(__file__, {}, timeout=max(10.0, min(180.0, budget.left())), keep_going=True)
            r = f"failed: {out['error']}" if "error" in out else out["note"]
        return {"part": "built-in check (no pytest)", "note": r}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           os.path.join(ROOT, "tests", "test_cuda.py"), *p["tests"]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             timeout=max(10.0, min(150.0, budget.left())))
    except subprocess.TimeoutExpired:
        return {"part": "tests/test_cuda.py", "note": "timed out"}
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]
    failed = [line.split(" - ")[0] for line in out.stdout.splitlines() if line.startswith("FAILED")]
    note = re.sub(r"=+", "", tail).strip() + ("; " + ", ".join(failed) if failed else "")
    return {"part": "tests/test_cuda.py", "note": note.replace("|", "/")}


def worker_selfcheck_in_process(p: dict) -> str:
    """Without pytest: 3 training steps with the sync debug mode at "error" (CUDA), and the tiny
    preset's top layer on the device against the CPU."""
    import torch

    from elmo import ElmoBiLM, batch_to_ids, preset

    device = torch.device(p["device"])
    torch.manual_seed(0)
    model = ElmoBiLM(preset("tiny")).eval()
    ids = batch_to_ids([["The", "cat", "sat", "."], ["Hello", "!"]])
    with torch.no_grad():
        want = model(ids).layers[-1]
        got = model.to(device)(ids.to(device)).layers[-1].cpu()
    diff = float((got - want).abs().max())
    spec = dict(kind="gpu_step", config="tiny", batch=8, window=10, vocab=2000, samples=64,
                threads=1, device=p["device"], precision="fp32", compile=False, steps=3, warmup=1,
                peak_tflops=p["peak_tflops"])
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        r = bench_pretrain.worker_gpu_step(spec)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    return (f"device vs CPU top layer max |diff| {diff:.1e}; 3 steps without a synchronisation "
            f"(loss {r['loss']:.3f})")


def train_rows(p: dict, budget: Budget) -> list:
    args = argparse.Namespace(window=p["window"], vocab=p["vocab"], samples=p["samples"],
                              threads=p["threads"], device=p["device"], precision=p["precision"],
                              peak_tflops=p["peak_tflops"], steps=p["steps"], warmup=p["warmup"])
    specs = []
    for config in p["train_configs"]:
        specs += bench_pretrain.gpu_step_specs([config], p["rows"], [], args)
    for config, rows in p["compile_rows"].items():
        specs += bench_pretrain.gpu_step_specs([config], [], rows, args)
    rows = []
    for spec in specs:
        mode = ("compiled" if spec["compile"] else "eager") + f", {spec['precision']}"
        base = {"part": "train step", "size": spec["config"], "shape": f"{spec['batch']} x {spec['window']}",
                "mode": mode}
        if budget.left() < 20:
            rows.append({**base, "note": "skipped: time budget"})
            continue
        r = bench_pretrain.run_gpu_worker(spec, min(300.0 if spec["compile"] else 150.0, budget.left()))
        if "error" in r:
            rows.append({**base, "note": f"failed: {r['error']}"})
        else:
            rows.append({**base, "tokens/s": f"{r['tokens_per_s']:,.0f}", "ms/step": f"{r['ms_per_step']:.1f}",
                         "peak MiB": f"{r['peak_mib']:,.0f}", "MFU": f"{100 * r['mfu']:.1f}%",
                         "note": f"{r['mflop_per_token']:.0f} MFLOP/token, {r['tflops']:.1f} TFLOP/s, "
                                 f"warm-up {r['warmup_s']:.0f} s, loss {r['loss']:.2f}", "raw": r})
        print(format_row(rows[-1]), flush=True)
    return rows


def embed_rows(p: dict, budget: Budget) -> list:
    rows = []
    for config in p["embed_configs"]:
        for dtype in p["embed_dtypes"]:
            spec = {"mode": "gpu", "device": p["device"], "threads": p["threads"], "config": config,
                    "dtype": dtype, "compile": False, "sentences": p["sentences"], "batch": p["batch"]}
            base = {"part": "embed", "size": config, "shape": f"{p['sentences']:,} sent, batch {p['batch']}",
                    "mode": f"eager, {dtype}"}
            if budget.left() < 20:
                rows.append({**base, "note": "skipped: time budget"})
                continue
            r = bench_embed.run_gpu_worker(spec, min(150.0, budget.left()))
            if "error" in r:
                rows.append({**base, "note": f"failed: {r['error']}"})
            else:
                rows.append({**base, "tokens/s": f"{r['tokens_per_s']:,.0f}", "peak MiB": f"{r['peak_mib']:,.0f}",
                             "note": f"model alone {r['model_tokens_per_s']:,.0f} tok/s; end to end includes "
                                     f"char ids, copy back, numpy", "raw": r})
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    """One row of the table (printed as soon as it is measured)."""
    return benchlib.markdown_table(COLUMNS, [[row.get(c, "") for c in COLUMNS]])[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same logic on the CPU, tiny sizes")
    ap.add_argument("--out", help="folder for gpu_check.md / .json (default $OUT, else runs/gpu_check)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for everything (default 420)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # the built-in check in a fresh process
    benchlib.add_output_flags(ap, "gpu-check")
    args = ap.parse_args(argv)
    p = plan(args.dry_run)
    if args.worker:
        print(json.dumps({"note": worker_selfcheck_in_process(p)}))
        return 0
    benchlib.check_output_flags(ap, args)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    out_dir = args.out or os.environ.get("OUT") or os.path.join(ROOT, "runs", "gpu_check")
    os.makedirs(out_dir, exist_ok=True)
    budget = Budget(args.budget)
    t0 = time.monotonic()
    rows = [run_tests(p, budget)]
    print(format_row(rows[-1]), flush=True)
    rows += train_rows(p, budget)
    rows += embed_rows(p, budget)
    from elmo.io import write_json_atomic, write_text_atomic

    environment = benchlib.machine(p["device"], p["threads"])
    header = (f"# GPU check ({'dry run on the CPU' if args.dry_run else 'CUDA'}): {environment}; "
              f"{time.monotonic() - t0:.0f} s")
    table = benchlib.markdown_table(COLUMNS, [[r.get(c, "") for c in COLUMNS] for r in rows])
    text = "\n".join([header, "", *table]) + "\n"
    print("\n" + text)
    write_text_atomic(os.path.join(out_dir, "gpu_check.md"), text)
    write_json_atomic(os.path.join(out_dir, "gpu_check.json"), {"environment": environment, "plan": p, "rows": rows})
    if args.markdown:
        config = ", ".join(f"{k} {v}" for k, v in p.items() if k != "tests")
        benchlib.write_section(args.markdown, args.section, benchlib.section_text(
            args.section, f"GPU check ({'dry run on the CPU' if args.dry_run else 'CUDA'})",
            benchlib.command_line(__file__, argv), config, table, device=p["device"], threads=p["threads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
