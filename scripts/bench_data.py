"""Benchmark of the pretraining data path: raw text read at every start vs a prepared corpus.

    python scripts/bench_data.py --tokens 10M,100M --work /work/bench-data --threads 1 [--markdown docs/benchmarks.md]

For each size it builds (once, cached under --work) a synthetic corpus by sampling real lines
with replacement (BBC News paragraphs and CoNLL-2003 training sentences from .data/, see
scripts/get_data.py; right for speed and memory, not for quality) and prints, for the raw-text
path (``data.prepare=false``: read and tokenized through ``datasets`` into memory at each start)
and the prepared path (``elmo-prepare``, then ``--train CORPUS_DIR``):

- preparation tokens/s with 1 and 2 workers (whitespace tokenizer) and with the punct tokenizer;
- size on disk (text, the prepared directory, the ``datasets`` cache the raw path writes);
- time to the first training step and to the first step of a resumed run, measured from the
  process start (imports included), each in a fresh process running ``pretrain.run.run``;
- peak resident memory (VmHWM: ru_maxrss would include the parent's, kept across exec) at the
  first step and after ``--steps`` steps;
- batch production tokens/s on one thread (window mode, 128 x 20, ``WindowBatcher.next_batch``:
  the distinct tokens' character ids and both targets; then also the (B, T, 50) char id tensor).

It then extrapolates to 1B tokens from the slope between the two sizes, and compares batch
production with what a training step at ORIGINAL size on one GPU consumes. Writes nothing into
the repository. The training runs use a toy biLM (16-dim projections, 256 sampled negatives;
``--model tiny`` for the tiny preset) with 128 x 20 batches, held-out evaluation and checkpoints
off until the last step: the data path is measured, not the model.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import ROOT, mib  # noqa: E402

sys.path.insert(0, ROOT)
from elmo.io import atomic_open, write_json_atomic  # noqa: E402

# The data path is what is measured, not the model: a biLM small enough that 200 steps of 128 x 20
# take seconds on a shared CPU (--model tiny for the tiny preset's 1.5M-parameter biLM).
TOY_MODEL = ("model.char_cnn.embedding_dim=4", "model.char_cnn.filters=[[1,8],[2,8],[3,16]]",
             "model.char_cnn.n_highway=1", "model.bilm.dim=32", "model.bilm.projection_dim=16",
             "softmax.num_samples=256")
GPU_TOKENS_PER_S = 250_000  # DESIGN.md "Scale and GPUs": the target for ORIGINAL size on one GPU


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KMB" else text) * scale)


def real_lines(data_dir: str) -> list[str]:
    """Non-blank BBC News lines (titles and paragraphs) and CoNLL-2003 training sentences."""
    lines = []
    for path in sorted(glob.glob(os.path.join(data_dir, "bbcnews", "*", "*.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [" ".join(line.split()) for line in f if line.strip()]
    sentence = []
    with open(os.path.join(data_dir, "conll2003", "train.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                if sentence:
                    lines.append(" ".join(sentence))
                sentence = []
            elif parts[0] != "-DOCSTART-":
                sentence.append(parts[0])
    if sentence:
        lines.append(" ".join(sentence))
    if not lines:
        raise SystemExit(f"no BBC News / CoNLL-2003 text under {data_dir}; run scripts/get_data.py")
    return lines


def make_corpus(path: str, n_tokens: int, data_dir: str, seed: int = 0) -> dict:
    """Sample real lines with replacement until ``n_tokens`` whitespace tokens; cached."""
    meta_path = path + ".json"
    if os.path.isfile(path) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("target") == n_tokens and meta.get("size") == os.path.getsize(path):
            return meta
    lines = real_lines(data_dir)
    lengths = np.array([len(line.split()) for line in lines])
    encoded = [(line + "\n").encode("utf-8") for line in lines]
    rng = np.random.default_rng(seed)
    written = n_lines = 0
    with atomic_open(path, "wb") as f:
        while written < n_tokens:
            pick = rng.integers(0, len(lines), 100_000)
            take = pick[: int(np.searchsorted(np.cumsum(lengths[pick]), n_tokens - written) + 1)]
            f.write(b"".join(encoded[i] for i in take))
            written += int(lengths[take].sum())
            n_lines += len(take)
    meta = {"target": n_tokens, "tokens": written, "lines": n_lines, "size": os.path.getsize(path),
            "pool_lines": len(lines)}
    write_json_atomic(meta_path, meta)
    return meta


def du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def timed_prepare(text: str, out: str, tokenizer: str, workers: int) -> tuple[float, float]:
    """Wall seconds of ``elmo-prepare`` from scratch (a fresh process, imports included) and the
    CPU seconds it and its workers used."""
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), benchlib.cpu_seconds(children=True)
    subprocess.run([sys.executable, "-m", "pretrain.prepare", text, "--out", out, "--tokenizer",
                    tokenizer, "--workers", str(workers), "--no-progress", "--log-level", "WARNING"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, benchlib.cpu_seconds(children=True) - c0


# -- one training start, in a fresh process ---------------------------------------------------
def worker(spec: dict) -> dict:
    """One training run (``train_start``'s arguments): the seconds from the process start, the CPU
    seconds and the memory (``benchlib.memory_mib``) at the first step, the memory at the last."""
    train, out, steps, threads = spec["train"], spec["out"], spec["steps"], spec["threads"]
    import torch

    from pretrain.config import pretrain_preset
    from pretrain.run import run

    torch.set_num_threads(int(threads))
    config = pretrain_preset("tiny")
    for a in (TOY_MODEL if spec["model"] == "toy" else ()):
        config = config.with_override(a)
    for a in ("data.batch_size=128", "data.window=20", f"data.prepare={str(spec['prepare']).lower()}",
              "train.eval_at_start=false", "train.eval_every=1000000", "train.checkpoint_every=1000000",
              "train.progress=false", f"train.max_steps={steps}", "train.log_every=1",
              "data.eval_max_tokens=2000"):
        config = config.with_override(a)
    seen = {}

    def memory() -> dict:
        return {f"{key}_mib": value for key, value in benchlib.memory_mib().items() if key != "rss"}

    def callback(trainer, metrics):
        if "first" not in seen:
            seen["first"] = {"seconds": time.time() - spec["t0"], "step": metrics["step"],
                             "cpu_seconds": benchlib.cpu_seconds(), **memory()}
        seen["last"] = {"step": metrics["step"], **memory()}

    run(config, [train], out, resume=spec["resume"], callback=callback)
    return seen


def train_start(train: str, out: str, steps: int, threads: int, prepare: bool, resume: bool,
                env: dict, model: str = "toy") -> dict:
    """``worker`` in a fresh process (the time to the first step counts its imports)."""
    spec = {"train": train, "out": out, "steps": steps, "threads": threads, "prepare": prepare,
            "resume": resume, "model": model, "t0": time.time()}
    return benchlib.run_worker(os.path.abspath(__file__), spec, env=env, cwd=ROOT)


# -- batch production -------------------------------------------------------------------------
def batch_rate(corpus, table, n_batches: int) -> tuple[float, float, float]:
    """Tokens per second of CPU time (this process, one thread) of WindowBatcher.next_batch
    (128 x 20), without and with the (B, T, 50) char ids; and tokens per wall-clock second
    without them (lower when other processes share the cores)."""
    import torch

    from pretrain.batches import WindowBatcher

    torch.set_num_threads(1)
    rates = []
    for with_chars in (False, True):
        b = WindowBatcher(corpus, table, 128, 20, seed=0)
        for _ in range(20):
            b.next_batch()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_batches):
            batch = b.next_batch()
            if with_chars:
                batch.char_ids()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rates.append(n_batches * 128 * 20 / cpu)
        if not with_chars:
            wall_rate = n_batches * 128 * 20 / wall
    return rates[0], rates[1], wall_rate


def raw_batch_rate(text: str, n_batches: int) -> tuple[float, float]:
    from pretrain.corpus import load_corpus
    from pretrain.vocab import Vocabulary, WordTable

    table = WordTable()
    corpus, _ = load_corpus([text], None, table, "whitespace", 0.02)
    table.set_vocab(Vocabulary.from_counts(table.counts([corpus.ids]), 20000))
    return batch_rate(corpus, table, n_batches)


def prepared_batch_rate(corpus_dir: str, n_batches: int) -> tuple[float, float]:
    from pretrain.prepared import ALPHA, PreparedCorpus, vocabulary_from_counts

    pc = PreparedCorpus(corpus_dir)
    train, _, counts = pc.split(0.02)
    table = pc.word_table()
    table.set_vocab(vocabulary_from_counts(table, counts, pc._load(ALPHA), 20000))
    return batch_rate(train, table, n_batches)


def _reader(corpus_dir: str, rank: int, world: int, queue) -> None:
    from pretrain.prepared import PreparedCorpus

    train, _, _ = PreparedCorpus(corpus_dir).split(0.02)
    n_sentences = n_tokens = 0
    for s in train.sentences(0, 0, rank, world):
        n_sentences += 1
        n_tokens += len(s)
    memory = benchlib.memory_mib()
    queue.put({"rank": rank, "sentences": n_sentences, "tokens": n_tokens,
               "anon_mib": memory["anon"], "file_mib": memory["file"], "peak_mib": memory["peak"]})


def shared_readers(corpus_dir: str, world: int = 2) -> list:
    """``world`` processes (as DDP ranks) each read their share of a whole epoch; their RSS."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(corpus_dir, r, world, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out = sorted((queue.get() for _ in procs), key=lambda d: d["rank"])
    for p in procs:
        p.join()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="10M,100M", help="corpus sizes, e.g. 10M,100M")
    p.add_argument("--work", default="/work/bench-data", help="folder for corpora and runs (outside the repo)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, ".data"))
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training runs")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--model", choices=["toy", "tiny"], default="toy",
                   help="biLM of the training runs: toy (16-dim, the default) or the tiny preset")
    p.add_argument("--batches", type=int, default=300, help="batches timed for batch production")
    p.add_argument("--no-raw", action="store_true", help="skip the raw-text path (slow, memory-hungry)")
    p.add_argument("--report-all", action="store_true",
                   help="the table also holds the sizes measured earlier into --work "
                        "(bench_data_results.json); sizes found there are not measured again")
    p.add_argument("--full-up-to", default="10M",
                   help="up to this size also: preparation with 1 worker and with the punct tokenizer, "
                        "the raw path's resumed start and batch rate, the implicit-preparation run")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one training run (train_start)
    benchlib.add_output_flags(p, "data")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    benchlib.check_output_flags(p, args)
    sizes = [parse_count(s) for s in args.tokens.split(",")]
    args.full_up_to = parse_count(args.full_up_to)
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=os.path.join(args.work, "hf-cache"))
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE",
                                           "HF_DATASETS_CACHE")})
    config = (f"sizes {args.tokens}, training runs: {args.model} biLM, 128 x 20 window batches, "
              f"{args.threads} torch thread(s), {args.steps} steps")
    print(f"# bench_data: {config}; {benchlib.machine('cpu', args.threads)}", flush=True)
    results_path = os.path.join(args.work, "bench_data_results.json")
    saved = {}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            saved = json.load(f)
    for n in sizes:
        if args.report_all and str(n) in saved:
            continue  # measured by an earlier invocation
        name = f"synthetic-{n // 10**6}M" if n >= 10**6 else f"synthetic-{n}"
        text = os.path.join(args.work, name + ".txt")
        meta = make_corpus(text, n, args.data_dir)
        r = {"size": n, "tokens": meta["tokens"], "lines": meta["lines"], "text_bytes": meta["size"]}
        print(f"\n## {name}: {meta['tokens']:,} tokens, {meta['lines']:,} lines, {mib(meta['size'])} "
              f"of text (sampled from {meta['pool_lines']:,} real lines)", flush=True)
        prepared = os.path.join(args.work, name + ".prepared")
        cases = (("whitespace", 1), ("punct", 2), ("whitespace", 2)) if n <= args.full_up_to else \
            (("whitespace", 2),)
        for tokenizer, workers in cases:
            s, cpu = timed_prepare(text, prepared, tokenizer, workers)
            r[f"prep_{tokenizer}_{workers}"] = s
            r[f"prep_{tokenizer}_{workers}_cpu"] = cpu
            with open(os.path.join(prepared, "manifest.json")) as f:
                tokens = json.load(f)["num_tokens"]
            print(f"prepare {tokenizer:10s} {workers} worker(s): {s:6.1f} s  {tokens / s / 1e6:5.2f}M tokens/s"
                  f" ({tokens:,} tokens; {cpu:.1f} CPU seconds in all)", flush=True)
        r["prepared_bytes"] = du(prepared)
        runs = {}
        for label, train, prep in (("prepared", prepared, True), ("raw", text, False)):
            if label == "raw" and args.no_raw:
                continue
            out = os.path.join(args.work, f"run-{name}-{label}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(env["HF_DATASETS_CACHE"], ignore_errors=True)
            first = train_start(train, out, args.steps, args.threads, prep, False, env, args.model)
            if label == "raw":
                r["hf_cache_bytes"] = du(env["HF_DATASETS_CACHE"]) if os.path.isdir(env["HF_DATASETS_CACHE"]) else 0
            if label == "prepared" or n <= args.full_up_to:
                resumed = train_start(train, out, args.steps + 1, args.threads, prep, True, env, args.model)
            else:  # the raw path reads the whole text again: as long as the first start
                resumed = {"first": {"seconds": float("nan"), "cpu_seconds": float("nan")}}
            runs[label] = {"first": first, "resumed": resumed}
            print(f"{label:8s} first step {first['first']['seconds']:6.1f} s ({first['first']['cpu_seconds']:.1f} CPU s),"
                  f" resumed step {resumed['first']['seconds']:6.1f} s ({resumed['first']['cpu_seconds']:.1f} CPU s); peak RSS at step 1 {first['first']['peak_mib']:,.0f}"
                  f" MiB (anon {first['first']['anon_mib']:,.0f}, file {first['first']['file_mib']:,.0f}),"
                  f" after {first['last']['step']} steps {first['last']['peak_mib']:,.0f} MiB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        if n <= args.full_up_to:  # the default for raw text: prepared into OUT/corpus first
            out = os.path.join(args.work, f"run-{name}-implicit")
            shutil.rmtree(out, ignore_errors=True)
            runs["implicit"] = {"first": train_start(text, out, 1, args.threads, True, False, env, args.model)}
            print(f"implicit first step {runs['implicit']['first']['first']['seconds']:6.1f} s "
                  f"({runs['implicit']['first']['first']['cpu_seconds']:.1f} CPU s; raw text prepared into "
                  f"OUT/corpus first), peak RSS {runs['implicit']['first']['first']['peak_mib']:,.0f} MiB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        r["runs"] = runs
        r["readers"] = shared_readers(prepared)
        tok_mib = os.path.getsize(os.path.join(prepared, "tokens.npy")) / 2**20
        for d in r["readers"]:
            print(f"reader {d['rank']} of 2 read {d['tokens']:,} tokens ({d['sentences']:,} sentences, its "
                  f"half of an epoch): RSS anon {d['anon_mib']:,.0f} MiB, file {d['file_mib']:,.0f} MiB, "
                  f"peak {d['peak_mib']:,.0f} MiB (tokens.npy is {tok_mib:,.0f} MiB)", flush=True)
        r["batch_prepared"] = prepared_batch_rate(prepared, args.batches)
        print(f"batch production, prepared: {r['batch_prepared'][0] / 1e6:.2f}M tokens per CPU second "
              f"({r['batch_prepared'][1] / 1e6:.2f}M with the (B, T, 50) char ids; "
              f"{r['batch_prepared'][2] / 1e6:.2f}M per wall second)", flush=True)
        if not args.no_raw and n <= args.full_up_to:
            r["batch_raw"] = raw_batch_rate(text, args.batches)
            print(f"batch production, raw:      {r['batch_raw'][0] / 1e6:.2f}M tokens per CPU second "
                  f"({r['batch_raw'][1] / 1e6:.2f}M with the (B, T, 50) char ids; "
                  f"{r['batch_raw'][2] / 1e6:.2f}M per wall second)", flush=True)
        shutil.rmtree(env["HF_DATASETS_CACHE"], ignore_errors=True)
        r["load_average"] = os.getloadavg()
        saved[str(n)] = r
        write_json_atomic(results_path, saved, indent=1)
    lines = report([saved[str(n)] for n in sorted(set(sizes + [int(k) for k in saved])) if str(n) in saved
                    and (n in sizes or args.report_all)], args)
    print("\n## table\n\n" + "\n".join(lines))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.markdown:
        benchlib.write_section(args.markdown, args.section, benchlib.section_text(
            args.section, "Pretraining data: raw text vs a prepared corpus", benchlib.command_line(__file__, argv),
            config, lines, threads=args.threads))


def report(results: list, args) -> list:
    """The table (one column per corpus size), the extrapolation to 1B tokens and the comparison
    with a GPU's consumption, as markdown lines."""
    rows = []

    def row(label, fn):
        cells = []
        for r in results:
            try:
                cell = fn(r)
            except (KeyError, TypeError):
                cell = "-"
            cells.append("-" if cell.startswith("nan") or "/ nan" in cell else cell)
        rows.append([label, *cells])

    rate = lambda key: lambda r: f"{r['tokens'] / r[key] / 1e6:.2f}M tokens/s"  # noqa: E731
    row("prepare, whitespace, 1 worker", rate("prep_whitespace_1"))
    row("prepare, whitespace, 2 workers", rate("prep_whitespace_2"))
    row("prepare, punct, 2 workers", rate("prep_punct_2"))
    row("prepare, whitespace: CPU seconds, 1 / 2 workers",
        lambda r: f"{r['prep_whitespace_1_cpu']:.1f} / {r['prep_whitespace_2_cpu']:.1f}")
    row("text on disk", lambda r: mib(r["text_bytes"]))
    row("prepared corpus on disk", lambda r: mib(r["prepared_bytes"]))
    row("raw path: `datasets` cache on disk", lambda r: mib(r["hf_cache_bytes"]))
    for label in ("raw", "prepared"):
        row(f"{label}: first step (from process start)", lambda r: f"{r['runs'][label]['first']['first']['seconds']:.1f} s")
        row(f"{label}: resumed step", lambda r: f"{r['runs'][label]['resumed']['first']['seconds']:.1f} s")
        row(f"{label}: CPU seconds to the first / resumed step",
            lambda r: f"{r['runs'][label]['first']['first']['cpu_seconds']:.1f} / "
                      f"{r['runs'][label]['resumed']['first']['cpu_seconds']:.1f}")
        row(f"{label}: peak RSS at step 1", lambda r: f"{r['runs'][label]['first']['first']['peak_mib']:,.0f} MiB")
        row(f"{label}: peak RSS after {args.steps} steps",
            lambda r: f"{r['runs'][label]['first']['last']['peak_mib']:,.0f} MiB")
    row("2 processes reading their halves of an epoch: peak RSS each",
        lambda r: " / ".join(f"{d['peak_mib']:,.0f} MiB" for d in r["readers"]))
    row("raw text, prepared implicitly (default): first step",
        lambda r: f"{r['runs']['implicit']['first']['first']['seconds']:.1f} s")
    row("raw: batch production (tokens per CPU second)", lambda r: f"{r['batch_raw'][0] / 1e6:.2f}M")
    row("prepared: batch production (tokens per CPU second)", lambda r: f"{r['batch_prepared'][0] / 1e6:.2f}M")
    row("prepared: batch + (B, T, 50) char ids (per CPU second)", lambda r: f"{r['batch_prepared'][1] / 1e6:.2f}M")
    row("prepared: batch production (tokens per wall second)", lambda r: f"{r['batch_prepared'][2] / 1e6:.2f}M")
    lines = benchlib.markdown_table(["", *(f"{r['tokens'] / 1e6:,.0f}M tokens" for r in results)], rows,
                                    right=range(1, len(results) + 1))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        dt = b["tokens"] - a["tokens"]
        lines.append(f"\nExtrapolated to 1B tokens (the slope between {a['tokens'] / 1e6:.0f}M and "
              f"{b['tokens'] / 1e6:.0f}M tokens; CPU seconds are this process's own, wall seconds "
              f"depend on the machine's load):")

        def at_1b(get):
            try:
                fa, fb = get(a), get(b)
            except KeyError:
                return float("nan")
            return fb + (fb - fa) / dt * (1e9 - b["tokens"])

        lines.append(f"- prepared corpus on disk: {at_1b(lambda r: r['prepared_bytes']) / 2**30:.1f} GiB "
              f"(text: {at_1b(lambda r: r['text_bytes']) / 2**30:.1f} GiB); preparation with 2 workers: "
              f"{at_1b(lambda r: r['prep_whitespace_2_cpu']) / 60:.1f} CPU minutes, "
              f"{at_1b(lambda r: r['prep_whitespace_2']) / 60:.1f} min wall")
        for label in ("prepared", "raw"):
            if label not in a["runs"] or label not in b["runs"]:
                continue
            first = lambda key: lambda r: r["runs"][label]["first"]["first"][key]  # noqa: E731
            resumed = lambda key: lambda r: r["runs"][label]["resumed"]["first"][key]  # noqa: E731
            peak = lambda r: r["runs"][label]["first"]["last"]["peak_mib"]  # noqa: E731
            wall = at_1b(first("seconds"))
            text = (f"- {label}: first step after {at_1b(first('cpu_seconds')):.0f} CPU s " +
                    (f"({wall:.0f} s wall)" if wall > 0 else "(wall seconds fell with the load: not extrapolated)"))
            if b["runs"][label]["resumed"]["first"]["cpu_seconds"] == b["runs"][label]["resumed"]["first"]["cpu_seconds"]:
                text += f", resumed step after {at_1b(resumed('cpu_seconds')):.0f} CPU s"
            lines.append(text + f", peak RSS {at_1b(peak) / 1024:.1f} GiB per process (growth "
                  f"{a['tokens'] / 1e6:.0f}M -> {b['tokens'] / 1e6:.0f}M tokens: {peak(b) - peak(a):+,.0f} MiB)")
    best = min(r["batch_prepared"][0] for r in results)  # tokens per CPU second
    lines.append(f"\nA training step at ORIGINAL size on one GPU consumes about {GPU_TOKENS_PER_S:,} tokens/s "
                 f"(DESIGN.md, 'Scale and GPUs'); one core produces prepared window batches at "
                 f"{best / 1e6:.2f}M tokens/s, {best / GPU_TOKENS_PER_S:.1f}x that.")
    return lines


if __name__ == "__main__":
    main()
