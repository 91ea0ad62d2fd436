"""Memory of ``elmo.hf_datasets.add_elmo_vectors``: does the peak grow with the data set?

    python scripts/bench_datasets.py [--sentences 3500 14041] [--output all] [--threads 1]
        [--markdown docs/benchmarks.md]

For each size, a fresh process reads the first N CoNLL-2003 training sentences (.data/, through
``datasets.Dataset.from_generator``), loads the reference fixture model
(shared/reference/elmo-tf-fixtures) and adds an ELMo column with ``add_elmo_vectors`` (batch 256,
written every 256 rows). It reports the column's Arrow file size and the process's peak resident
memory above what it held just before the map. Bounded memory means the growth stays about the
same while the column grows with N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

REFERENCE = os.environ.get("ELMO_REFERENCE_DIR", os.path.join(ROOT, "..", "shared", "reference",
                                                              "elmo-tf-fixtures"))


def conll_sentences(path: str, limit: int):
    tokens = []
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] != "-DOCSTART-":
                tokens.append(parts[0])
            elif tokens:
                yield {"tokens": tokens}
                tokens, n = [], n + 1
                if n == limit:
                    return
    if tokens:
        yield {"tokens": tokens}


def worker(spec: dict) -> dict:
    import datasets
    import torch

    from elmo import Embedder
    from elmo.hf_datasets import add_elmo_vectors

    torch.set_num_threads(spec["threads"])
    ds = datasets.Dataset.from_generator(conll_sentences, gen_kwargs={"path": spec["data"], "limit": spec["n"]},
                                         cache_dir=os.path.join(spec["tmp"], "hf"))
    embedder = Embedder.from_pretrained(options_file=os.path.join(REFERENCE, "options.json"),
                                        weight_file=os.path.join(REFERENCE, "lm_weights.hdf5"), device="cpu")
    out_file = os.path.join(spec["tmp"], "elmo.arrow")
    before = benchlib.memory_mib()["rss"]
    t0 = time.perf_counter()
    add_elmo_vectors(ds, embedder, output=spec["output"], batch_size=256, cache_file_name=out_file,
                     load_from_cache_file=False)
    seconds = time.perf_counter() - t0
    peak = benchlib.peak_mib()
    n_tok = sum(len(t) for t in ds["tokens"])
    return {"rows": ds.num_rows, "tokens": n_tok, "seconds": seconds,
            "arrow_mib": os.path.getsize(out_file) / 2**20, "growth_mib": peak - before}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, nargs="+", default=[3500, 14041])
    ap.add_argument("--output", default="all", help="all, top or average")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.path.join(ROOT, ".data", "conll2003", "train.txt"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    benchlib.add_output_flags(ap, "datasets")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    benchlib.check_output_flags(ap, args)
    for path in (args.data, os.path.join(REFERENCE, "lm_weights.hdf5")):
        if not os.path.isfile(path):
            print(f"bench_datasets: {path} not found (run scripts/get_data.py; ELMO_REFERENCE_DIR)",
                  file=sys.stderr)
            return 2
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    config = (f"add_elmo_vectors, output={args.output}, batch 256, the reference fixture model (2P = 32), "
              f"{args.threads} thread(s), the first N CoNLL-2003 training sentences, one fresh process each")
    print(f"# {config}")
    header = ["sentences", "tokens", "seconds", "Arrow column MiB", "peak memory growth MiB"]
    rows = []
    for n in args.sentences:
        with tempfile.TemporaryDirectory(prefix="elmo_bench_ds_") as tmp:
            spec = {"n": n, "output": args.output, "threads": args.threads, "data": args.data, "tmp": tmp}
            r = benchlib.run_worker(__file__, spec, env=env)
        rows.append((f"{r['rows']:,}", f"{r['tokens']:,}", f"{r['seconds']:.1f}", f"{r['arrow_mib']:.1f}",
                     f"{r['growth_mib']:.0f}"))
        print(f"# {n} sentences done", flush=True)
    table = benchlib.markdown_table(header, rows, right=range(len(header)))
    print("\n".join(table))
    if args.markdown:
        benchlib.write_section(args.markdown, args.section, benchlib.section_text(
            args.section, "Memory of add_elmo_vectors", benchlib.command_line(__file__, argv), config,
            table, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
