"""Training speed of elmo-pretrain, side by side with AllenNLP's ELMo on the same shape.

    flock /tmp/bench.lock python scripts/bench_pretrain.py [--configs tiny small original]
        [--softmax full sampled] [--batch 32] [--window 20] [--vocab 100000] [--samples 8192]
        [--threads 2] [--steps 5] [--device cpu] [--precision fp32] [--no-peer] [--json FILE]
        [--markdown docs/benchmarks.md]
    python scripts/bench_pretrain.py --gpu-grid --device cuda --precision bf16 [--configs small original]
        [--rows 128 256 512] [--compile-rows 512] [--peak-tflops 790]   # scripts/gpu_check.sh

Two tables:

1. Same shape as the AllenNLP peer (its bench_reference.py --mode train): 32 sentences of 20
   tokens (the peer's words and recipe) with <S>/</S> added, a full softmax over 10,000 words on
   the top layer (forward half predicts the next token, backward half the previous one), timed
   from zero_grad through backward (no optimizer step), median of --steps after one warm-up.
   Both sides load the same random weights in the original layout (written once, seed 0).
   The ratio is ours / AllenNLP's tokens per second, measured in the same run.
2. Our full training step (Trainer.train_step: batching, forward, loss, backward, clipping,
   Adagrad update) in window mode: --batch rows x --window tokens, state carried across steps,
   a --vocab-word vocabulary (Zipf-distributed synthetic text), full or sampled softmax
   (--samples log-uniform negatives).

``--gpu-grid`` instead times the sync-free window-mode step (``worker_gpu_step``) over --rows
eagerly and --compile-rows compiled, for each --configs: tokens/s, ms per step, peak memory and
model FLOPs utilisation against --peak-tflops (neither ``datasets`` nor the peer is imported).

"CPU ms/step" is the median process CPU time of a timed step (all threads; on a machine shared
with other jobs it usually moves less than the wall-clock rate; read it with --threads 1).
Each measurement runs in a fresh process, so "peak MiB" is that run's maximum resident memory
(on CUDA: peak allocated GPU memory). The AllenNLP side runs when its environment exists
(shared/peers/allennlp-elmo/setup.sh; default /tmp/refenv, or $REFENV). ``--markdown FILE`` also
writes the tables, with the command, commit, machine and configuration, as the ``pretrain-cpu``
(``pretrain-cuda``, ``pretrain-gpu-grid``) section of FILE (docs/benchmarks.md). The helpers shared
with the other bench scripts are in scripts/benchlib.py.
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
from benchlib import PEER_NAMES, peak_mib  # noqa: E402


def peer_batch(n_sent: int = 32, length: int = 20, seed: int = 1) -> list:
    """The peer's training batch recipe: words of <= 20 characters from its sentences.txt."""
    return benchlib.peer_sentences(n_sent, length, length, seed)


def ensure_weights(size: str, weights_dir: str) -> tuple[str, str]:
    """Seeded random weights of our preset ``size`` in the original layout, named as the peer expects."""
    return benchlib.ensure_weights(size, weights_dir)


_sync = benchlib.sync


def synthetic_corpus(V: int, n_tok: int):
    """(table, EncodedCorpus): ``n_tok`` tokens of Zipf-distributed text (seed 0; ids up to V + 5,000,
    so a few are out of the vocabulary) in sentences of 5-39 words, and the table of a ``V``-word
    vocabulary (<S>, </S>, <UNK>, w0, w1, ...)."""
    import numpy as np

    from pretrain.corpus import EncodedCorpus
    from pretrain.vocab import Vocabulary, WordTable

    table = WordTable(Vocabulary(["<S>", "</S>", "<UNK>"] + [f"w{i}" for i in range(V - 3)]))
    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.1, n_tok), V + 5000) - 1
    words = [f"w{i}" for i in range(int(ids.max()) + 1)]
    sentences, k = [], 0
    for n in rng.integers(5, 40, n_tok // 5):
        if k >= n_tok:
            break
        sentences.append(table.encode(words[j] for j in ids[k : k + n]))
        k += n
    return table, EncodedCorpus(table, sentences)


# -- workers (each in a fresh process) ----------------------------------------------------------
def worker_peer_shape(spec: dict) -> dict:
    """Ours on the peer's shape: forward + 10k full softmax loss + backward."""
    import torch

    from elmo import load_original
    from pretrain.batches import pad_sentences
    from pretrain.config import SoftmaxConfig
    from pretrain.lm import BidirectionalLM
    from pretrain.vocab import Vocabulary, WordTable

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    sentences = peer_batch()
    words = sorted({w for s in sentences for w in s})
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + words + [f"filler{i}" for i in range(10000 - 3 - len(words))])
    table = WordTable(vocab)
    bilm = load_original(spec["options"], spec["weights"])
    torch.manual_seed(0)
    lm = BidirectionalLM(bilm.config, len(vocab), SoftmaxConfig(kind="full"), bilm=bilm).to(device).train()
    from pretrain.train import autocast

    times, cpu = [], []
    for i in range(1 + spec["steps"]):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        lm.zero_grad(set_to_none=True)
        batch = pad_sentences([table.encode(s) for s in sentences], table).to(device)  # strings included
        with autocast(device, spec["precision"]):
            out = lm(batch)
        loss = out.forward_loss_sum / out.forward_count + out.backward_loss_sum / out.backward_count
        loss.backward()
        _sync(device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    n_tok = sum(map(len, sentences))
    return {"tokens_per_s": n_tok / statistics.median(times), "best": n_tok / min(times),
            "cpu_ms": 1000 * statistics.median(cpu), "tokens": n_tok, "peak_mib": peak_mib(spec["device"])}


def worker_train_step(spec: dict) -> dict:
    """Our full training step in window mode on synthetic Zipf text with a ``vocab``-word vocabulary.

    ``batch``, ``window``, ``softmax``, ``samples`` and ``precision`` override the preset's (None:
    the preset's own), then the ``sets`` ("FIELD=VALUE") in order. ``loop`` "stepped" runs every
    LSTM layer through the stepped reference loop of elmo.cells.base instead of the fused kernels
    (scripts/bench_lstm_loop.py); the result also lists every step's loss."""
    import torch

    from pretrain.batches import WindowBatcher
    from pretrain.config import pretrain_preset
    from pretrain.distributed import DistInfo
    from pretrain.lm import BidirectionalLM
    from pretrain.train import Trainer

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if spec.get("loop", "fused") == "stepped":
        from elmo.lstm import Lstm

        Lstm.runs_fused = False  # this process only: the reference loop, for an A/B comparison
    config = pretrain_preset(spec["config"])
    fields = {"data.batch_size": spec.get("batch"), "data.window": spec.get("window"),
              "softmax.kind": spec.get("softmax"), "softmax.num_samples": spec.get("samples"),
              "train.precision": spec.get("precision")}
    for assignment in ([f"{k}={v}" for k, v in fields.items() if v is not None]
                       + ["train.max_steps=1000000", *spec.get("sets", ())]):
        config = config.with_override(assignment)
    rows, window = config.data.batch_size, config.data.window
    table, corpus = synthetic_corpus(spec["vocab"], (2 + spec["steps"]) * rows * window + 1000)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(table.vocab), config.softmax)
    batcher = WindowBatcher(corpus, table, rows, window, seed=0)
    trainer = Trainer(lm, batcher, config, 10**6, info=DistInfo(device=device))
    times, cpu, losses = [], [], []
    for i in range(1 + spec["steps"]):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.train_step(batcher.next_batch())
        _sync(device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        losses.append(metrics["loss"])  # (read after the clock: it waits for the device)
    tokens = rows * window
    return {"tokens_per_s": tokens / statistics.median(times), "best": tokens / min(times),
            "cpu_ms": 1000 * statistics.median(cpu), "ms_per_step": 1000 * statistics.median(times),
            "tokens": tokens, "peak_mib": peak_mib(spec["device"]), "softmax_kind": lm.softmax.kind,
            "losses": losses, "fused": [bool(m.runs_fused) for m in lm.modules() if hasattr(m, "runs_fused")]}


# -- the GPU training step (scripts/gpu_check.sh) ---------------------------------------------------
def train_flops_per_token(model, num_samples: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3 x the forward's matmuls), counted
    per token as if every token ran the character CNN (deduplication saves some of that):
    char CNN convolutions, highways and projection; per layer and direction the input, recurrent
    and output-projection products; the sampled softmax (num_samples + 1 logits) per direction."""
    cc, b = model.char_cnn, model.bilm
    e, C = cc.embedding_dim, cc.max_characters_per_token
    n = sum(count for _, count in cc.filters)
    conv = sum(2 * w * e * count * (C - w + 1) for w, count in cc.filters)
    highway = cc.n_highway * 2 * (2 * n * n)
    proj = 2 * n * b.projection_dim
    P, H = b.projection_dim, b.dim
    lstm = b.n_layers * 2 * (2 * P * 4 * H + 2 * P * 4 * H + 2 * H * P)
    softmax = 2 * 2 * P * (num_samples + 1)
    return 3.0 * (conv + highway + proj + lstm + softmax)


def worker_gpu_step(spec: dict) -> dict:
    """``steps`` window-mode training steps (Trainer.train_step, the sync-free step) timed as one
    block after ``warmup`` steps: one synchronisation at each end, as a long run sees it."""
    import torch

    from pretrain.batches import WindowBatcher
    from pretrain.config import pretrain_preset
    from pretrain.distributed import DistInfo
    from pretrain.lm import BidirectionalLM
    from pretrain.train import DevicePrefetcher, Trainer

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = spec.get("tf32", True)  # the fp32 recurrence
    config = pretrain_preset(spec["config"])
    for assignment in (f"data.batch_size={spec['batch']}", f"data.window={spec['window']}",
                       "softmax.kind=sampled", f"softmax.num_samples={spec['samples']}",
                       f"train.precision={spec['precision']}", "train.max_steps=1000000",
                       f"train.compile={'true' if spec['compile'] else 'false'}"):
        config = config.with_override(assignment)
    rows, T = spec["batch"], spec["window"]
    table, corpus = synthetic_corpus(spec["vocab"], (spec["warmup"] + spec["steps"] + 2) * rows * T + 1000)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(table.vocab), config.softmax)
    batcher = WindowBatcher(corpus, table, rows, T, seed=0)
    trainer = Trainer(lm, batcher, config, 10**6, info=DistInfo(device=device))
    trainer.sync_every_step = device.type == "cpu"
    feed = DevicePrefetcher(batcher, device)
    t0 = time.perf_counter()
    for _ in range(spec["warmup"]):
        trainer.train_step(feed.next_batch())
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        metrics = trainer.train_step(feed.next_batch())
        feed.fetch()  # the next batch is built while the device runs this step
    _sync(device)
    dt = time.perf_counter() - t0
    loss = metrics["loss"]
    tokens = rows * T * spec["steps"]
    flops = train_flops_per_token(config.model, spec["samples"])
    return {"tokens_per_s": tokens / dt, "ms_per_step": 1000 * dt / spec["steps"],
            "warmup_s": warmup_s, "peak_mib": peak_mib(spec["device"]), "loss": loss,
            "mflop_per_token": flops / 1e6, "tflops": tokens / dt * flops / 1e12,
            "mfu": tokens / dt * flops / (spec["peak_tflops"] * 1e12)}


def gpu_step_specs(configs, rows, compile_rows, args) -> list:
    """The grid of scripts/gpu_check.sh: each config at each row count eagerly, and compiled at
    ``compile_rows`` (compiling costs minutes, so once per config)."""
    base = {"kind": "gpu_step", "window": args.window, "vocab": args.vocab, "samples": args.samples,
            "threads": args.threads, "device": args.device, "precision": args.precision,
            "peak_tflops": args.peak_tflops, "steps": args.steps, "warmup": args.warmup}
    specs = [dict(base, config=c, batch=r, compile=False) for c in configs for r in rows]
    specs += [dict(base, config=c, batch=r, compile=True, warmup=max(args.warmup, 3))
              for c in configs for r in compile_rows]
    return specs


def gpu_step_table(results: list) -> list[str]:
    lines = ["| config | rows x tokens | mode | tokens/s | ms/step | peak MiB | MFLOP/token | TFLOP/s | "
             "MFU | warm-up s | loss |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, r in results:
        mode = ("compiled" if spec["compile"] else "eager") + f", {spec['precision']}"
        if "error" in r:
            lines.append(f"| {spec['config']} | {spec['batch']} x {spec['window']} | {mode} | failed: "
                         f"{r['error']} | | | | | | | |")
            continue
        lines.append(f"| {spec['config']} | {spec['batch']} x {spec['window']} | {mode} | "
                     f"{r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | {r['peak_mib']:,.0f} | "
                     f"{r['mflop_per_token']:.0f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% | "
                     f"{r['warmup_s']:.1f} | {r['loss']:.3f} |")
    return lines


def run_worker(spec: dict) -> dict:
    return benchlib.run_worker(__file__, spec)


def run_gpu_worker(spec: dict, timeout: float) -> dict:
    """A GPU-grid measurement in a fresh process (its own peak memory); a failure or a timeout is
    reported in the table instead of ending the check."""
    return benchlib.run_worker(__file__, spec, timeout=timeout, keep_going=True)


def gpu_grid(args) -> list[str]:
    """--gpu-grid: the training-step grid of scripts/gpu_check.sh; returns the table's lines."""
    results = []
    for spec in gpu_step_specs(args.configs, args.rows, args.compile_rows, args):
        results.append((spec, run_gpu_worker(spec, args.worker_timeout)))
        print(gpu_step_table(results[-1:])[-1], flush=True)
    lines = [f"Training step, window mode, {args.window} tokens per row, {args.vocab:,}-word vocabulary, "
             f"{args.samples:,} sampled negatives, {args.precision}, device {args.device}; "
             f"{args.steps} steps timed after {args.warmup} warm-up steps; MFU against "
             f"{args.peak_tflops:g} TFLOP/s"] + gpu_step_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{**spec, **r} for spec, r in results], f, indent=2)
    return lines


def run_peer(size: str, weights_dir: str, steps: int, threads: int) -> dict | None:
    return benchlib.run_peer_bench("train", size, weights_dir, steps, threads)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "small", "original"],
                   choices=list(PEER_NAMES))
    p.add_argument("--softmax", nargs="*", default=["full", "sampled"], choices=["full", "sampled"],
                   help="softmax kinds of table 2 (none: skip table 2)")
    p.add_argument("--batch", type=int, default=32, help="rows per step (table 2)")
    p.add_argument("--window", type=int, default=20, help="tokens per row (table 2)")
    p.add_argument("--vocab", type=int, default=100_000, help="softmax vocabulary (table 2)")
    p.add_argument("--samples", type=int, default=8192, help="sampled-softmax negatives (table 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--weights-dir", default="/tmp/elmo_pretrain_bench")
    p.add_argument("--no-peer", action="store_true", help="skip AllenNLP")
    p.add_argument("--json", help="also write all results here")
    gpu = p.add_argument_group("GPU grid (scripts/gpu_check.sh)")
    gpu.add_argument("--gpu-grid", action="store_true",
                     help="only the sync-free training step over --rows (eager) and --compile-rows "
                          "(compiled) for each --configs; tokens/s, peak memory, MFU")
    gpu.add_argument("--rows", type=int, nargs="+", default=[128, 256, 512])
    gpu.add_argument("--compile-rows", type=int, nargs="*", default=[512])
    gpu.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    gpu.add_argument("--peak-tflops", type=float, default=790.0,
                     help="the chip's dense bf16 peak for MFU (790: measured on the H200)")
    gpu.add_argument("--worker-timeout", type=float, default=240.0, help="seconds per measurement")
    benchlib.add_output_flags(p, None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    benchlib.check_output_flags(p, args)
    if args.worker:
        spec = json.loads(args.worker)
        worker = {"peer_shape": worker_peer_shape, "gpu_step": worker_gpu_step}.get(spec["kind"],
                                                                                   worker_train_step)
        result = worker(spec)
        print(json.dumps(result))
        return 0
    if args.gpu_grid:
        lines = gpu_grid(args)
        print("\n".join(lines))
        if args.markdown:
            device = args.device.split(":")[0]
            section = args.section or ("pretrain-gpu-grid" if device != "cpu" else "pretrain-gpu-grid-on-cpu")
            compiled = ", ".join(map(str, args.compile_rows))
            config = (f"{lines[0]}; configs {', '.join(args.configs)}, rows {', '.join(map(str, args.rows))} eager"
                      f"{', ' + compiled + ' compiled (train.compile)' if compiled else ''}; "
                      "the steps timed as one block (one synchronisation at each end), batches prefetched "
                      "one step ahead; model FLOPs per token by train_flops_per_token.")
            benchlib.write_section(args.markdown, section, benchlib.section_text(
                section, f"Training step on {args.device} (window mode)", benchlib.command_line(__file__, argv),
                config, lines[1:], device=args.device, threads=args.threads))
        return 0

    import torch

    print(f"# torch {torch.__version__}, threads {args.threads}, device {args.device}, "
          f"precision {args.precision}, cpu {torch.backends.cpu.get_cpu_capability()}")
    results = {"peer_shape": [], "train_step": []}
    # the peer runs on the CPU only: beside a GPU run its figures would compare two machines
    peer_ok = not args.no_peer and args.device == "cpu" and benchlib.peer_available()
    print("\n## Same shape as AllenNLP: 32 x 20 tokens (+<S>,</S>), 10k-word full softmax, "
          "forward + backward (no optimizer step)")
    print("| config | ours tokens/s | ours CPU ms/step | ours peak MiB | AllenNLP tokens/s | AllenNLP peak MiB "
          "| ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in args.configs:
        options, weights = ensure_weights(size, args.weights_dir)
        ours = run_worker({"kind": "peer_shape", "options": options, "weights": weights,
                           "threads": args.threads, "steps": args.steps, "device": args.device,
                           "precision": args.precision})
        peer = run_peer(size, args.weights_dir, max(3, args.steps), args.threads) if peer_ok else None
        row = {"config": size, "ours": ours, "allennlp": peer,
               "ratio": ours["tokens_per_s"] / peer["tokens_per_s"] if peer else None}
        results["peer_shape"].append(row)
        print(f"| {size} | {ours['tokens_per_s']:,.0f} | {ours['cpu_ms']:,.0f} | {ours['peak_mib']:,.0f} | "
              + (f"{peer['tokens_per_s']:,.0f} | {peer['peak_mib']:,.0f} | {row['ratio']:.2f}x |" if peer
                 else "- | - | - |"), flush=True)

    print(f"\n## Our training step (window mode, batch {args.batch} x {args.window} tokens, "
          f"vocabulary {args.vocab:,}, Adagrad, clip 10)")
    print("| config | softmax | tokens/s | CPU ms/step | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for size in args.configs:
        for kind in args.softmax:
            r = run_worker({"kind": "train_step", "config": size, "softmax": kind,
                            "samples": args.samples, "batch": args.batch, "window": args.window,
                            "vocab": args.vocab, "threads": args.threads, "steps": args.steps,
                            "device": args.device, "precision": args.precision})
            results["train_step"].append({"config": size, "softmax": kind, **r})
            label = f"sampled ({args.samples:,})" if r["softmax_kind"] == "sampled" else r["softmax_kind"]
            print(f"| {size} | {label} | {r['tokens_per_s']:,.0f} | {r['cpu_ms']:,.0f} | {r['peak_mib']:,.0f} |",
                  flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    if args.markdown:
        peer_rows = [(r["config"], f"{r['ours']['tokens_per_s']:,.0f}", f"{r['ours']['cpu_ms']:,.0f}",
                      f"{r['ours']['peak_mib']:,.0f}",
                      benchlib.fmt(r["allennlp"] and r["allennlp"]["tokens_per_s"]),
                      benchlib.fmt(r["allennlp"] and r["allennlp"]["peak_mib"]),
                      f"{r['ratio']:.2f}x" if r["ratio"] else "-") for r in results["peer_shape"]]
        step_rows = [(r["config"],
                      f"sampled ({args.samples:,})" if r["softmax_kind"] == "sampled" else r["softmax_kind"],
                      f"{r['tokens_per_s']:,.0f}", f"{r['cpu_ms']:,.0f}", f"{r['peak_mib']:,.0f}")
                     for r in results["train_step"]]
        body = benchlib.markdown_table(["config", "ours tokens/s", "ours CPU ms/step", "ours peak MiB",
                                        "AllenNLP tokens/s", "AllenNLP peak MiB", "ratio"], peer_rows,
                                       right=(1, 2, 3, 4, 5, 6))
        if step_rows:
            body += [""] + benchlib.markdown_table(["config", "softmax", "tokens/s", "CPU ms/step", "peak MiB"],
                                                   step_rows, right=(2, 3, 4))
        config = (f"device {args.device}, precision {args.precision}; table 1 is the peer's training benchmark: "
                  "32 sentences of 20 tokens with <S>/</S>, a 10,000-word full softmax on the top layer, "
                  f"zero_grad through backward (no optimizer step), median of {args.steps} steps after a warm-up, "
                  f"the same random weights on both sides (AllenNLP: {'in the same run' if peer_ok else 'not run'}). "
                  f"Table 2 is Trainer.train_step in window mode: {args.batch} rows x {args.window} tokens, a "
                  f"{args.vocab:,}-word vocabulary (Zipf text), Adagrad, clipping 10, softmax "
                  f"{' and '.join(args.softmax) or 'none'} ({args.samples:,} sampled negatives).")
        section = args.section or f"pretrain-{args.device.split(':')[0]}"
        benchlib.write_section(args.markdown, section, benchlib.section_text(
            section, "Training: the peer's shape beside AllenNLP, and our whole step",
            benchlib.command_line(__file__, argv), config, body, device=args.device, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
