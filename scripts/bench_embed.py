"""Inference speed of this package's ELMo, side by side with AllenNLP's on the same weights.

    python scripts/bench_embed.py [--configs small original] [--threads 2] [--runs 7]
                                  [--file-sentences 400] [--dtypes float32 bfloat16] [--no-peer]
                                  [--onnx] [--device cuda] [--markdown docs/benchmarks.md]

For each size (SMALL = the released 2x1024_128_2048cnn_1xhighway, ORIGINAL = 2x4096_512_2048cnn_
2xhighway), random weights are written once in the original layout (options.json + HDF5, seed 0)
and used by both implementations:

* batch: one batch of 32 sentences of 20-30 tokens (words drawn from the peer's sentences.txt
  with the peer's own recipe, so both sides embed the same batch); median of --runs timed calls
  after 2 warm-ups, strings -> char ids included. AllenNLP: its bench_reference.py --mode infer.
* file: a file of --file-sentences sentences (BBC News, tokenized) embedded to HDF5 with
  `--all`: ours with the featurizer's own batching (Embedder.embed_file), AllenNLP with its
  run_reference.py (`allennlp elmo` batching, batch 64, --stateless).
* parity: the maximum absolute difference between the two HDF5 files (both stateless, float32).
* bfloat16 (opt-in mode): speed on the batch and its maximum absolute error against float32.
* --onnx: the same model exported with ``elmo-export --onnx`` (elmo.onnx_export, not timed) and
  run by onnxruntime (CPU, --threads intra-op threads) on the same batch, strings -> char ids
  included, median of --runs after 2 warm-ups; its top layer's maximum difference from ours.

"CPU ms/call" is the median process CPU time of a timed batch call (all threads; on a machine shared
with other jobs it usually moves less than the wall-clock rate; read it with --threads 1). Each
measurement runs in a fresh process (so "peak MiB" is that run's maximum resident memory).
The AllenNLP side runs when its environment exists (shared/peers/allennlp-elmo/setup.sh, default
/tmp/refenv). ``--device cuda`` times only the featurizer on that device (``worker_gpu``: no peer,
no file; float32 and bfloat16; neither ``datasets`` nor the peer is imported). Prints one table;
``--markdown FILE`` also writes it, with the command, commit, machine and configuration, as the
``embed-cpu`` (or ``embed-cuda``) section of FILE (docs/benchmarks.md). The helpers shared with the
other bench scripts are in scripts/benchlib.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import PEER_DIR, ROOT, peak_mib  # noqa: E402,F401

SIZES = ("small", "original")


def make_batch(n_sent: int = 32, lo: int = 20, hi: int = 30, seed: int = 0) -> list:
    """The peer's benchmark batch: words of <= 20 characters from its sentences.txt."""
    return benchlib.peer_sentences(n_sent, lo, hi, seed)


def make_file(path: str, n: int) -> None:
    """n sentences of BBC News (if fetched) or the peer's sentences, tokenized, one per line."""
    bbc = os.path.join(ROOT, ".data", "bbcnews")
    lines: list = []
    if os.path.isdir(bbc):
        for folder in sorted(os.listdir(bbc)):
            for name in sorted(os.listdir(os.path.join(bbc, folder))):
                with open(os.path.join(bbc, folder, name), encoding="utf-8", errors="replace") as f:
                    for para in f.read().split("\n"):
                        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", para.strip()):
                            toks = re.findall(r"\w+(?:[-']\w+)*|[^\w\s]", sent)
                            if 3 <= len(toks) <= 60:
                                lines.append(" ".join(toks))
        random.Random(0).shuffle(lines)
    else:
        lines = [" ".join(s) for s in make_batch(n, 5, 40, seed=3)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:n]) + "\n")


def ensure_weights(size: str, weights_dir: str) -> tuple[str, str]:
    """Seeded random weights in the original layout (LSTM input biases ~ N(0, 0.2))."""
    return benchlib.ensure_weights(size, weights_dir, bias_std=0.2)


# -- the featurizer on a GPU (scripts/gpu_check.sh; issue 17) ---------------------------------------
def worker_gpu(spec: dict) -> dict:
    """``Embedder.embed_sentences`` over ``sentences`` sentences of 5-40 tokens on spec["device"]
    (end to end: char ids on the host, the model, the copy back, numpy arrays; --top output) and
    the model alone on the same batches already on the device (one synchronisation at the end)."""
    import torch

    from elmo import ElmoBiLM, Embedder, preset

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = ElmoBiLM(preset(spec["config"]))
    embedder = Embedder(model, device=device, dtype=getattr(torch, spec["dtype"]),
                        batch_size=spec["batch"], max_tokens_per_batch=spec["batch"] * 64,
                        compile=spec["compile"])
    sentences = make_batch(spec["sentences"], 5, 40, seed=7)
    n_tok = sum(map(len, sentences))
    t0 = time.perf_counter()
    for _ in embedder.embed_sentences(sentences[: 4 * spec["batch"]], output="top"):  # warm-up
        pass
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        benchlib.sync(device)
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in embedder.embed_sentences(sentences, output="top"):
        pass
    e2e = time.perf_counter() - t0
    batches = [embedder._inputs([sentences[i] for i in b]) + ([len(sentences[i]) for i in b],)
               for b in embedder._batches(sentences, spec["batch"])]
    with torch.inference_mode():
        benchlib.sync(device)
        t0 = time.perf_counter()
        for tokens, vectors, lengths in batches:
            embedder._forward(tokens, token_vectors=vectors, lengths=lengths)
        benchlib.sync(device)
        model_s = time.perf_counter() - t0
    peak = peak_mib(spec["device"])
    return {"tokens": n_tok, "tokens_per_s": n_tok / e2e, "model_tokens_per_s": n_tok / model_s,
            "warmup_s": warmup_s, "peak_mib": peak}


def gpu_specs(args) -> list:
    base = {"mode": "gpu", "device": args.device, "threads": args.threads,
            "sentences": args.gpu_sentences, "batch": args.gpu_batch}
    specs = [dict(base, config=c, dtype=d, compile=False) for c in args.configs for d in args.dtypes]
    if args.compile:
        specs += [dict(base, config=c, dtype=args.dtypes[-1], compile=True) for c in args.configs]
    return specs


def run_gpu_worker(spec: dict, timeout: float) -> dict:
    """One GPU-table measurement in a fresh process; a failure or timeout comes back as "error"."""
    return benchlib.run_worker(__file__, spec, timeout=timeout, keep_going=True)


def gpu_table(args) -> list[str]:
    lines = [f"Featurizer (Embedder.embed_sentences, --top), {args.gpu_sentences:,} sentences of 5-40 "
             f"tokens, batches of {args.gpu_batch}, device {args.device}",
             "| size | dtype | mode | end-to-end tok/s | model-only tok/s | peak MiB | warm-up s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for spec in gpu_specs(args):
        mode = "compiled" if spec["compile"] else "eager"
        r = run_gpu_worker(spec, args.worker_timeout)
        if "error" in r:
            lines.append(f"| {spec['config']} | {spec['dtype']} | {mode} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {spec['config']} | {spec['dtype']} | {mode} | {r['tokens_per_s']:,.0f} | "
                         f"{r['model_tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} | {r['warmup_s']:.1f} |")
        print(lines[-1], flush=True)
    return lines


# -- workers (each in a fresh process) ----------------------------------------------------------
def worker(spec: dict) -> dict:
    if spec["mode"] == "gpu":
        return worker_gpu(spec)
    return worker_cpu(spec)


def worker_cpu(spec: dict) -> dict:
    import numpy as np
    import torch

    from elmo import Embedder, batch_to_ids

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    embedder = Embedder.from_pretrained(options_file=spec["options"], weight_file=spec["weights"],
                                        device="cpu", dtype=dtype)
    if spec["mode"] == "onnx":
        from elmo.onnx_export import OnnxBiLM, export_onnx

        path = os.path.join(os.path.dirname(spec["save"]), f"{spec['size']}.onnx")
        export_onnx(embedder.model, path)
        session = OnnxBiLM(path, threads=spec["threads"])
        batch = make_batch()
        n_tok = sum(map(len, batch))
        times, cpu = [], []
        for i in range(2 + spec["runs"]):
            t0, c0 = time.perf_counter(), time.process_time()
            layers, _ = session(batch_to_ids(batch))
            if i >= 2:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        np.save(spec["save"], layers[-1])
        med = statistics.median(times)
        return {"tokens_per_s": n_tok / med, "ms": med * 1000, "tokens": n_tok,
                "cpu_ms": 1000 * statistics.median(cpu), "peak_mib": peak_mib()}
    if spec["mode"] == "batch":
        batch = make_batch()
        n_tok = sum(map(len, batch))
        times, model_times, cpu = [], [], []
        with torch.inference_mode():
            for i in range(2 + spec["runs"]):
                t0, c0 = time.perf_counter(), time.process_time()
                ids = batch_to_ids(batch)
                t1 = time.perf_counter()
                out = embedder.model(ids)
                t2 = time.perf_counter()
                if i >= 2:
                    times.append(t2 - t0)
                    model_times.append(t2 - t1)
                    cpu.append(time.process_time() - c0)
        top = out.layers[-1].float().numpy()
        if spec.get("save"):
            np.save(spec["save"], top)
        med = statistics.median(times)
        return {"tokens_per_s": n_tok / med, "model_tokens_per_s": n_tok / statistics.median(model_times),
                "best_tokens_per_s": n_tok / min(times), "ms": med * 1000, "tokens": n_tok,
                "cpu_ms": 1000 * statistics.median(cpu), "peak_mib": peak_mib()}
    t0 = time.perf_counter()
    embedder.embed_file(spec["input"], spec["output"], output="all")
    dt = time.perf_counter() - t0
    with open(spec["input"], encoding="utf-8") as f:
        n_tok = sum(len(line.split()) for line in f)
    return {"tokens_per_s": n_tok / dt, "seconds": dt, "tokens": n_tok, "peak_mib": peak_mib()}


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def run_worker(spec: dict) -> dict:
    return benchlib.run_worker(__file__, spec)


def run_peer_batch(size: str, weights_dir: str, runs: int, threads: int) -> dict | None:
    return benchlib.run_peer_bench("infer", size, weights_dir, runs, threads)


run_peer_file = benchlib.run_peer_file


def max_diff_hdf5(a: str, b: str) -> float:
    import h5py
    import numpy as np

    worst = 0.0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for k in fa.keys():
            if k != "sentence_to_index":
                worst = max(worst, float(np.abs(fa[k][...] - fb[k][...]).max(initial=0.0)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["small", "original"],
                    choices=["tiny", *SIZES], help="sizes (tiny: the GPU table only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--file-sentences", type=int, default=400)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--weights-dir", default=os.path.join(tempfile.gettempdir(), "elmo_bench_weights"))
    ap.add_argument("--no-peer", action="store_true", help="skip AllenNLP even if it is set up")
    ap.add_argument("--onnx", action="store_true",
                    help="also time onnxruntime on the exported model (extra [onnx]) on the same batch")
    gpu = ap.add_argument_group("GPU table (scripts/gpu_check.sh)")
    gpu.add_argument("--device", default="cpu",
                     help="cuda: only the featurizer table on that device (no peer, no file)")
    gpu.add_argument("--gpu-sentences", type=int, default=20000)
    gpu.add_argument("--gpu-batch", type=int, default=256, help="sentences per batch on the device")
    gpu.add_argument("--compile", action="store_true", help="also Embedder(compile=True)")
    gpu.add_argument("--worker-timeout", type=float, default=240.0)
    gpu.add_argument("--gpu-only", action="store_true", help="the GPU table on --device cpu (a dry run)")
    benchlib.add_output_flags(ap, None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    benchlib.check_output_flags(ap, args)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.device != "cpu" or args.gpu_only:
        lines = gpu_table(args)
        if args.markdown:
            device = args.device.split(":")[0]
            section = args.section or (f"embed-{device}" if device != "cpu" else "embed-gpu-path-on-cpu")
            config = (f"sizes {', '.join(args.configs)}, random weights (seed 0); dtypes {', '.join(args.dtypes)}"
                      f"{', also compiled' if args.compile else ''}; {args.gpu_sentences:,} sentences of "
                      f"5-40 tokens in batches of {args.gpu_batch}; end to end = Embedder.embed_sentences "
                      "(char ids on the host, copies back), model-only = the same batches already on the "
                      "device, one synchronisation at each end.")
            benchlib.write_section(args.markdown, section, benchlib.section_text(
                section, f"The featurizer on {args.device}", benchlib.command_line(__file__, argv), config,
                lines[1:], device=args.device, threads=args.threads))
        return 0

    peer = not args.no_peer and benchlib.peer_available()
    import torch

    print(f"# torch {torch.__version__}, {args.threads} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}; AllenNLP peer: {'yes' if peer else 'no'}")
    rows = []
    tmp = tempfile.mkdtemp(prefix="elmo_bench_")
    src = os.path.join(tmp, "sentences.txt")
    make_file(src, args.file_sentences)
    for size in args.configs:
        options, weights = ensure_weights(size, args.weights_dir)
        base = {"options": options, "weights": weights, "threads": args.threads, "runs": args.runs}
        ref_top = os.path.join(tmp, f"{size}_float32_top.npy")
        peer_batch = run_peer_batch(size, args.weights_dir, args.runs, args.threads) if peer else None
        for dtype in args.dtypes:
            spec = dict(base, mode="batch", dtype=dtype, save=os.path.join(tmp, f"{size}_{dtype}_top.npy"))
            r = run_worker(spec)
            err = ""
            if dtype != "float32" and os.path.exists(ref_top):
                import numpy as np

                a, b = np.load(ref_top), np.load(spec["save"])
                err = f"max abs err {np.abs(a - b).max():.3g} (max abs x {np.abs(a).max():.3g})"
            rows.append((size, f"batch 32x20-30 ({r['tokens']} tok)", dtype, r["tokens_per_s"],
                         peer_batch["tokens_per_s"] if peer_batch else None, r["cpu_ms"], r["peak_mib"],
                         peer_batch["peak_mib"] if peer_batch else None, err))
        if args.onnx:
            spec = dict(base, mode="onnx", dtype="float32", size=size,
                        save=os.path.join(tmp, f"{size}_onnx_top.npy"))
            r = run_worker(spec)
            note = ""
            if os.path.exists(ref_top):
                import numpy as np

                a, b = np.load(ref_top), np.load(spec["save"])
                if a.shape == b.shape:
                    note = f"onnxruntime {ort_version()}; top layer max abs diff from torch {np.abs(a - b).max():.2g}"
            rows.append((size, f"batch 32x20-30 ({r['tokens']} tok), onnxruntime", "float32",
                         r["tokens_per_s"], None, r["cpu_ms"], r["peak_mib"], None, note))
        n_tok = None
        ours_h5 = os.path.join(tmp, f"{size}_ours.hdf5")
        r = run_worker(dict(base, mode="file", dtype="float32", input=src, output=ours_h5))
        n_tok = r["tokens"]
        peer_file, parity = None, ""
        if peer:
            ref_h5 = os.path.join(tmp, f"{size}_allennlp.hdf5")
            peer_file = run_peer_file(options, weights, src, ref_h5, args.threads)
            if peer_file:
                parity = f"max abs diff to AllenNLP {max_diff_hdf5(ref_h5, ours_h5):.2g}"
        rows.append((size, f"file {args.file_sentences} sent ({n_tok} tok)", "float32",
                     r["tokens_per_s"], peer_file["tokens_per_s"] if peer_file else None, None,
                     r["peak_mib"], peer_file["peak_mib"] if peer_file else None, parity))

    table = benchlib.markdown_table(
        ["size", "workload", "dtype", "ours tok/s", "AllenNLP tok/s", "ratio", "ours CPU ms/call", "ours peak MiB",
         "AllenNLP peak MiB", "note"],
        [(size, work, dtype, f"{ours:,.0f}", benchlib.fmt(theirs), f"{ours / theirs:.2f}x" if theirs else "-",
          benchlib.fmt(cpu), f"{mem:,.0f}", benchlib.fmt(pmem), note)
         for size, work, dtype, ours, theirs, cpu, mem, pmem, note in rows],
        right=(3, 4, 5, 6, 7, 8))
    print()
    print("\n".join(table))
    if args.markdown:
        section = args.section or "embed-cpu"
        config = (f"sizes {', '.join(args.configs)}, random weights (seed 0, LSTM input biases ~ N(0, 0.2)) in "
                  f"the original layout; batch = 32 sentences of 20-30 tokens (the peer's recipe), strings to "
                  f"char ids included, median of {args.runs} calls after 2 warm-ups; file = {args.file_sentences} "
                  f"sentences through Embedder.embed_file to HDF5 (--all); dtypes {', '.join(args.dtypes)}"
                  f"{'; onnxruntime on the exported model' if args.onnx else ''}; AllenNLP peer: "
                  f"{'yes, in the same run' if peer else 'not run'}.")
        benchlib.write_section(args.markdown, section, benchlib.section_text(
            section, "Inference: ours vs AllenNLP on the same weights", benchlib.command_line(__file__, argv),
            config, table, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
