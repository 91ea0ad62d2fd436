"""Training speed of elmo-pretrain, side by side with AllenNLP's ELMo on the same shape.

    flock /tmp/bench.lock python scripts/bench_pretrain.py [--configs tiny small original]
        [--softmax full sampled] [--batch 32] [--window 20] [--vocab 100000] [--samples 8192]
        [--threads 2] [--steps 5] [--device cpu] [--precision fp32] [--no-peer] [--json FILE]

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

Each measurement runs in a fresh process, so "peak MiB" is that run's maximum resident memory
(on CUDA: peak allocated GPU memory). The AllenNLP side runs when its environment exists
(shared/peers/allennlp-elmo/setup.sh; default /tmp/refenv, or $REFENV).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_DIR = os.path.join(ROOT, "..", "shared", "peers", "allennlp-elmo")
REFENV = os.environ.get("REFENV", "/tmp/refenv")
PEER_NAMES = {"tiny": "tiny", "small": "small", "original": "full"}  # the peer scripts' names


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peer_batch(n_sent: int = 32, length: int = 20, seed: int = 1) -> list:
    """The peer's training batch recipe: words of <= 20 characters from its sentences.txt."""
    path = os.path.join(PEER_DIR, "sentences.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            vocab = sorted({t for line in f for t in line.split() if len(t) <= 20})
    else:
        rng0 = random.Random(1)
        vocab = sorted({"".join(rng0.choice("abcdefghij") for _ in range(rng0.randint(1, 9)))
                        for _ in range(2000)})
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(rng.randint(length, length))] for _ in range(n_sent)]


def ensure_weights(size: str, weights_dir: str) -> tuple[str, str]:
    """Seeded random weights of our preset ``size`` in the original layout, named as the peer expects."""
    name = PEER_NAMES[size]
    options = os.path.join(weights_dir, f"{name}_options.json")
    weights = os.path.join(weights_dir, f"{name}_weights.hdf5")
    if not (os.path.exists(options) and os.path.exists(weights)):
        import torch

        from elmo import ElmoBiLM, preset, save_original

        torch.manual_seed(0)
        os.makedirs(weights_dir, exist_ok=True)
        save_original(ElmoBiLM(preset(size)), options, weights)
    return options, weights


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


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

    times = []
    for i in range(1 + spec["steps"]):
        _sync(device)
        t0 = time.perf_counter()
        lm.zero_grad(set_to_none=True)
        batch = pad_sentences([table.encode(s) for s in sentences], table).to(device)  # strings included
        with autocast(device, spec["precision"]):
            out = lm(batch)
        loss = out.forward_loss_sum / out.forward_count + out.backward_loss_sum / out.backward_count
        loss.backward()
        _sync(device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
    n_tok = sum(map(len, sentences))
    return {"tokens_per_s": n_tok / statistics.median(times), "best": n_tok / min(times),
            "tokens": n_tok, "peak_mib": peak_mib(spec["device"])}


def worker_train_step(spec: dict) -> dict:
    """Our full training step in window mode on synthetic Zipf text with a ``vocab``-word vocabulary."""
    import numpy as np
    import torch

    from pretrain.batches import WindowBatcher
    from pretrain.config import pretrain_preset
    from pretrain.corpus import EncodedCorpus
    from pretrain.distributed import DistInfo
    from pretrain.lm import BidirectionalLM
    from pretrain.train import Trainer
    from pretrain.vocab import Vocabulary, WordTable

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    config = pretrain_preset(spec["config"])
    for assignment in (f"data.batch_size={spec['batch']}", f"data.window={spec['window']}",
                       f"softmax.kind={spec['softmax']}", f"softmax.num_samples={spec['samples']}",
                       f"train.precision={spec['precision']}", "train.max_steps=1000000"):
        config = config.with_override(assignment)
    V = spec["vocab"]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + [f"w{i}" for i in range(V - 3)])
    table = WordTable(vocab)
    rng = np.random.default_rng(0)
    n_tok = (2 + spec["steps"]) * spec["batch"] * spec["window"] + 1000
    ids = np.minimum(rng.zipf(1.1, n_tok), V + 5000) - 1  # a few out-of-vocabulary words too
    words = [f"w{i}" for i in range(int(ids.max()) + 1)]
    lengths = rng.integers(5, 40, n_tok // 5)
    sentences, k = [], 0
    for n in lengths:
        if k >= n_tok:
            break
        sentences.append(table.encode(words[j] for j in ids[k : k + n]))
        k += n
    corpus = EncodedCorpus(table, sentences)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    batcher = WindowBatcher(corpus, table, spec["batch"], spec["window"], seed=0)
    trainer = Trainer(lm, batcher, config, 10**6, info=DistInfo(device=device))
    times = []
    for i in range(1 + spec["steps"]):
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step(batcher.next_batch())
        _sync(device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
    tokens = spec["batch"] * spec["window"]
    return {"tokens_per_s": tokens / statistics.median(times), "best": tokens / min(times),
            "tokens": tokens, "peak_mib": peak_mib(spec["device"]), "softmax_kind": lm.softmax.kind}


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
    import numpy as np
    import torch

    from pretrain.batches import WindowBatcher
    from pretrain.config import pretrain_preset
    from pretrain.corpus import EncodedCorpus
    from pretrain.distributed import DistInfo
    from pretrain.lm import BidirectionalLM
    from pretrain.train import DevicePrefetcher, Trainer
    from pretrain.vocab import Vocabulary, WordTable

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
    V, rows, T = spec["vocab"], spec["batch"], spec["window"]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + [f"w{i}" for i in range(V - 3)])
    table = WordTable(vocab)
    rng = np.random.default_rng(0)
    n_tok = (spec["warmup"] + spec["steps"] + 2) * rows * T + 1000
    ids = np.minimum(rng.zipf(1.1, n_tok), V + 5000) - 1
    words = [f"w{i}" for i in range(int(ids.max()) + 1)]
    sentences, k = [], 0
    for n in rng.integers(5, 40, n_tok // 5):
        if k >= n_tok:
            break
        sentences.append(table.encode(words[j] for j in ids[k : k + n]))
        k += n
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    batcher = WindowBatcher(EncodedCorpus(table, sentences), table, rows, T, seed=0)
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
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_gpu_worker(spec: dict, timeout: float) -> dict:
    """A GPU-grid measurement in a fresh process (its own peak memory); a failure or a timeout is
    reported in the table instead of ending the check."""
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:160].replace("|", "/")}
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    cmd = [os.path.join(REFENV, "bin", "python"), os.path.join(PEER_DIR, "bench_reference.py"),
           "--configs", PEER_NAMES[size], "--mode", "train", "--weights-dir", weights_dir,
           "--train-runs", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"([\d.]+) tokens/s median.*peak RSS (\d+) MiB", out.stdout)
    if out.returncode != 0 or not m:
        print(f"# AllenNLP run failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return {"tokens_per_s": float(m.group(1)), "peak_mib": float(m.group(2))}


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
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        worker = {"peer_shape": worker_peer_shape, "gpu_step": worker_gpu_step}.get(spec["kind"],
                                                                                   worker_train_step)
        result = worker(spec)
        print(json.dumps(result))
        return 0
    if args.gpu_grid:
        print("\n".join(gpu_grid(args)))
        return 0

    import torch

    print(f"# torch {torch.__version__}, threads {args.threads}, device {args.device}, "
          f"precision {args.precision}, cpu {torch.backends.cpu.get_cpu_capability()}")
    results = {"peer_shape": [], "train_step": []}
    peer_ok = not args.no_peer and os.path.exists(os.path.join(REFENV, "bin", "python"))
    print("\n## Same shape as AllenNLP: 32 x 20 tokens (+<S>,</S>), 10k-word full softmax, "
          "forward + backward (no optimizer step)")
    print("| config | ours tokens/s | ours peak MiB | AllenNLP tokens/s | AllenNLP peak MiB | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.configs:
        options, weights = ensure_weights(size, args.weights_dir)
        ours = run_worker({"kind": "peer_shape", "options": options, "weights": weights,
                           "threads": args.threads, "steps": args.steps, "device": args.device,
                           "precision": args.precision})
        peer = run_peer(size, args.weights_dir, max(3, args.steps), args.threads) if peer_ok else None
        row = {"config": size, "ours": ours, "allennlp": peer,
               "ratio": ours["tokens_per_s"] / peer["tokens_per_s"] if peer else None}
        results["peer_shape"].append(row)
        print(f"| {size} | {ours['tokens_per_s']:,.0f} | {ours['peak_mib']:,.0f} | "
              + (f"{peer['tokens_per_s']:,.0f} | {peer['peak_mib']:,.0f} | {row['ratio']:.2f}x |" if peer
                 else "- | - | - |"), flush=True)

    print(f"\n## Our training step (window mode, batch {args.batch} x {args.window} tokens, "
          f"vocabulary {args.vocab:,}, Adagrad, clip 10)")
    print("| config | softmax | tokens/s | peak MiB |")
    print("|---|---|---:|---:|")
    for size in args.configs:
        for kind in args.softmax:
            r = run_worker({"kind": "train_step", "config": size, "softmax": kind,
                            "samples": args.samples, "batch": args.batch, "window": args.window,
                            "vocab": args.vocab, "threads": args.threads, "steps": args.steps,
                            "device": args.device, "precision": args.precision})
            results["train_step"].append({"config": size, "softmax": kind, **r})
            label = f"sampled ({args.samples:,})" if r["softmax_kind"] == "sampled" else r["softmax_kind"]
            print(f"| {size} | {label} | {r['tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
