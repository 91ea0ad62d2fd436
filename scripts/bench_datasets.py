"""Memory of ``elmo.hf_datasets.add_elmo_vectors``: does the peak grow with the data set?

    python scripts/bench_datasets.py [--sentences 3500 14041] [--output all] [--threads 1]

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
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
    before = rss_bytes()
    t0 = time.perf_counter()
    add_elmo_vectors(ds, embedder, output=spec["output"], batch_size=256, cache_file_name=out_file,
                     load_from_cache_file=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_tok = sum(len(t) for t in ds["tokens"])
    return {"rows": ds.num_rows, "tokens": n_tok, "seconds": seconds,
            "arrow_mib": os.path.getsize(out_file) / 2**20, "growth_mib": (peak - before) / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, nargs="+", default=[3500, 14041])
    ap.add_argument("--output", default="all", help="all, top or average")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.path.join(ROOT, ".data", "conll2003", "train.txt"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    for path in (args.data, os.path.join(REFERENCE, "lm_weights.hdf5")):
        if not os.path.isfile(path):
            print(f"bench_datasets: {path} not found (run scripts/get_data.py; ELMO_REFERENCE_DIR)",
                  file=sys.stderr)
            return 2
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    print(f"# add_elmo_vectors, output={args.output}, batch 256, reference fixture model (2P = 32), "
          f"{args.threads} thread(s)")
    print("| sentences | tokens | seconds | Arrow column MiB | peak memory growth MiB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.sentences:
        with tempfile.TemporaryDirectory(prefix="elmo_bench_ds_") as tmp:
            spec = {"n": n, "output": args.output, "threads": args.threads, "data": args.data, "tmp": tmp}
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['rows']:,} | {r['tokens']:,} | {r['seconds']:.0f} | {r['arrow_mib']:.0f} | "
              f"{r['growth_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
