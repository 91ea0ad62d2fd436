"""The README's task table: NER on CoNLL-2003 and Pang & Lee polarity, with and without ELMo.

    .venv/bin/python scripts/task_results.py --model runs/main/lm --out runs/tasks

For each task it trains the model with the ELMo and the baseline (``--no-elmo``) with the default
settings of ``elmo-task`` (early stopping on dev), then scores each on train, dev and test
(conlleval span F1 for NER, accuracy for polarity) and writes OUT/results.md (a Markdown table) and
OUT/results.json. Runs whose model folder already has results.json are not trained again (delete
the folder, or pass --force, to redo one). The polarity sentences are split once (stratified,
seed 0: 3,200 / 400 / 400) into OUT/polarity/.

``--seeds 0,1,2`` trains every model once per seed (the head's initialisation, dropout and batch
order; the data split stays fixed) and reports each score as the mean and standard deviation over
the seeds: with 400 test sentences one polarity point is four sentences, so a single run cannot
tell two models apart. Seed 0 uses the folders ``NAME_elmo`` / ``NAME_base``; seed s > 0 adds
``_seedS``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tasks.cli import main as elmo_task  # noqa: E402


def run(argv: list) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if elmo_task(argv) != 0:
            raise SystemExit(f"elmo-task {' '.join(argv)} failed")
    return out.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ELMo model folder (needed unless --variants base)")
    p.add_argument("--data", default=os.path.join(ROOT, ".data"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "tasks"))
    p.add_argument("--tasks", default="ner,polarity")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="passed to every training")
    p.add_argument("--force", action="store_true", help="train again even where results exist")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training and scoring (0 = default)")
    p.add_argument("--variants", default="elmo,base", help="which models: elmo, base (no ELMo) or both")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0); scores are averaged")
    args = p.parse_args(argv)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2")
    if not seeds:
        p.error("--seeds: give at least one seed")
    names = args.tasks.split(",")
    if not names or set(names) - {"ner", "polarity"}:
        p.error(f"--tasks {args.tasks!r}: expected ner, polarity or ner,polarity")
    variants = set(args.variants.split(","))
    if "elmo" in variants and not args.model:
        p.error("--model ELMO_DIR is needed for the ELMo models (or pass --variants base)")
    if not variants or variants - {"elmo", "base"}:
        p.error(f"--variants {args.variants!r}: expected elmo, base or elmo,base")
    os.makedirs(args.out, exist_ok=True)
    conll = os.path.join(args.data, "conll2003")
    splits = {"ner": {"train": os.path.join(conll, "train.txt"), "dev": os.path.join(conll, "valid.txt"),
                      "test": os.path.join(conll, "test.txt")}}
    extra = {"ner": [], "polarity": ["--set", "data.text_column=1", "--set", "data.label_column=0"]}
    if "polarity" in names:
        splits["polarity"] = json.loads(run(["split", os.path.join(args.data, "polarity", "pang_lee_sentences.csv"),
                                             "--out", os.path.join(args.out, "polarity"), "--label-column", "0"]))
    table = {}
    for name in names:
        task, files = ("ner" if name == "ner" else "classify"), splits[name]
        for variant, source in (("ELMo", ["--model", args.model]), ("no ELMo", ["--no-elmo"])):
            if ("elmo" if variant == "ELMo" else "base") not in variants:
                continue
            runs = []
            for seed in seeds:
                folder = os.path.join(args.out, f"{name}_{'elmo' if variant == 'ELMo' else 'base'}"
                                      + (f"_seed{seed}" if seed else ""))
                started = time.perf_counter()
                if args.force or not os.path.isfile(os.path.join(folder, "results.json")):
                    sets = [x for s in args.set for x in ("--set", s)] + ["--set", f"train.seed={seed}"]
                    if args.threads:
                        sets += ["--set", f"train.num_threads={args.threads}"]
                    run(["train", task, "--train", files["train"], "--dev", files["dev"], "--test", files["test"],
                         "--out", folder, "--force", *source, *extra[name], *sets, "--quiet"])
                with open(os.path.join(folder, "results.json")) as f:
                    results = json.load(f)
                row = {"seed": seed, "best_epoch": results["best_epoch"], "epochs": results["epochs"],
                       "train_minutes": (time.perf_counter() - started) / 60}
                for split in ("train", "dev", "test"):
                    scores = json.loads(run(["evaluate", folder, "--data", files[split], "--json", "--quiet",
                                             "--threads", str(args.threads)]))
                    row[split] = scores[scores["metric"]]
                runs.append(row)
                print(f"{name:9s} {variant:8s} seed {seed}  train {row['train']:6.2f}  dev {row['dev']:6.2f}  "
                      f"test {row['test']:6.2f}", flush=True)
            table[(name, variant)] = runs

    def cell(runs: list, split: str) -> str:
        values = [r[split] for r in runs]
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    header = "| task | input | train | dev | test | epochs (best) |"
    if len(seeds) > 1:
        header = f"| task | input | train | dev (mean ± sd, {len(seeds)} seeds) | test (mean ± sd) | epochs (best) |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for (name, variant), runs in table.items():
        label = "NER, CoNLL-2003 (span F1)" if name == "ner" else "polarity, Pang & Lee (accuracy)"
        epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs)
        lines.append(f"| {label} | {variant} | {cell(runs, 'train')} | {cell(runs, 'dev')} | {cell(runs, 'test')} | "
                     f"{epochs} |")
    if len(seeds) > 1:
        lines += ["", "| task | input | seed | train | dev | test |", "| --- | --- | --- | --- | --- | --- |"]
        for (name, variant), runs in table.items():
            lines += [f"| {name} | {variant} | {r['seed']} | {r['train']:.2f} | {r['dev']:.2f} | {r['test']:.2f} |"
                      for r in runs]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"seeds": seeds, "runs": {f"{n}/{v}": r for (n, v), r in table.items()}}, f, indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
