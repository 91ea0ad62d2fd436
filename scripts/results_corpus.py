"""Write the pretraining text of the README's task table: news plus unlabelled in-domain text.

    .venv/bin/python scripts/results_corpus.py --out runs/results2/corpus
    .venv/bin/elmo-pretrain --train .data/bbcnews runs/results2/corpus --preset tiny --tokenizer punct \\
        --out runs/results2/lm --max-tokens 6000000 --threads 2

Files written to OUT (one sentence per line; BBC News is read from .data/bbcnews directly):

    conll2003_train.txt   the tokens of the CoNLL-2003 training sentences (no tags);
    polarity_train.txt    the text of the Pang & Lee polarity training split (no labels), the split
                          that scripts/task_results.py makes (stratified, seed 0, 80/10/10);
    movie_reviews.txt     the 1,500 full movie reviews of Pang & Lee's review polarity data (no
                          labels), one sentence per line, minus every line that is also a
                          sentence of the polarity dev or test split.

Dev and test text of either task is never written. Prints the counts as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tasks.readers import read_classification, read_conll2003  # noqa: E402
from tasks.split import _write_atomic, split_classification  # noqa: E402


def _texts(path: str) -> list:
    """The polarity CSVs' text column (index 1), whitespace-normalised."""
    return [" ".join(x.tokens) for x in read_classification(path, text_column="1", with_labels=False)]


def _write(path: str, lines: list) -> None:
    _write_atomic(path, "".join(line + "\n" for line in lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, ".data"), help="scripts/get_data.py's folder")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "results", "corpus"))
    args = p.parse_args(argv)
    conll = os.path.join(args.data, "conll2003", "train.txt")
    sentences = os.path.join(args.data, "polarity", "pang_lee_sentences.csv")
    reviews = os.path.join(args.data, "polarity", "pang_lee_reviews.csv")
    for path in (conll, sentences, reviews):
        if not os.path.isfile(path):
            p.error(f"{path} is missing: run `python scripts/get_data.py` first")
    os.makedirs(args.out, exist_ok=True)
    counts = {}

    lines = [" ".join(x.tokens) for x in read_conll2003(conll, with_tags=False)]
    _write(os.path.join(args.out, "conll2003_train.txt"), lines)
    counts["conll2003_train"] = {"lines": len(lines), "words": sum(len(x.split()) for x in lines)}

    with tempfile.TemporaryDirectory() as tmp:
        parts = split_classification(sentences, tmp, label_column="0")
        train = _texts(parts["train"])
        held_out = {t for part in ("dev", "test") for t in _texts(parts[part])}
    _write(os.path.join(args.out, "polarity_train.txt"), train)
    counts["polarity_train"] = {"lines": len(train), "words": sum(len(x.split()) for x in train)}

    kept, dropped = [], 0
    with open(reviews, encoding="utf-8-sig", newline="") as f:
        texts = [row[1] for row in csv.reader(f) if len(row) > 1]
    for review in texts:
        for line in review.splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            if line in held_out:
                dropped += 1
                continue
            kept.append(line)
    _write(os.path.join(args.out, "movie_reviews.txt"), kept)
    counts["movie_reviews"] = {"lines": len(kept), "words": sum(len(x.split()) for x in kept),
                               "dropped_as_polarity_dev_or_test": dropped}
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
