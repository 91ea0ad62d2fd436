"""A short NER run on CoNLL-2003 with and without ELMo; prints both F1 scores.

    .venv/bin/python scripts/ner_demo.py --model runs/main/lm            # about 2-4 minutes on 2 cores

Trains the same BiLSTM-CRF head twice on the first --max-train training sentences for --epochs
epochs: on a scalar mix of the ELMo layers (cached) plus word embeddings, and on word embeddings
plus a character CNN (the baseline), then scores both on the first --max-eval sentences of the
dev and test sets with conlleval's span F1. The model folders stay in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tasks.cli import main as elmo_task  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="ELMo model folder")
    p.add_argument("--data", default=os.path.join(ROOT, ".data", "conll2003"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "ner_demo"))
    p.add_argument("--max-train", type=int, default=2000)
    p.add_argument("--max-eval", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="passed to elmo-task")
    args = p.parse_args(argv)
    common = ["--train", os.path.join(args.data, "train.txt"), "--dev", os.path.join(args.data, "valid.txt"),
              "--test", os.path.join(args.data, "test.txt"), "--epochs", str(args.epochs),
              "--set", f"data.max_train={args.max_train}", "--set", f"data.max_eval={args.max_eval}", "--quiet"]
    for s in args.set + ([f"train.num_threads={args.threads}"] if args.threads else []):
        common += ["--set", s]
    rows = []
    for name, source in (("ELMo", ["--model", args.model]), ("no ELMo", ["--no-elmo"])):
        out = os.path.join(args.out, name.replace(" ", "_").lower())
        if elmo_task(["train", "ner", "--out", out, "--force", *source, *common]) != 0:  # a rerun replaces it
            return 1
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        rows.append((name, results["dev"]["f1"], results["test"]["f1"], results["best_epoch"]))
    print(f"\nNER, CoNLL-2003 (first {args.max_train} training sentences, {args.epochs} epochs, "
          f"first {args.max_eval} dev/test sentences), conlleval span F1:")
    for name, dev, test, epoch in rows:
        print(f"  {name:8s} dev F1 {dev:6.2f}   test F1 {test:6.2f}   (best epoch {epoch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
