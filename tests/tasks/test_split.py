"""Deterministic stratified train/dev/test splits of one classification file or class folder."""

import json
import os

from tasks.cli import main
from tasks.readers import read_classification
from tasks.split import split_classification


def test_split_csv_stratified_and_deterministic(tmp_path):
    rows = [("1" if i % 4 else "-1", f"text number {i} ,\n") for i in range(40)]  # 30 x "1", 10 x "-1"
    path = tmp_path / "all.csv"
    path.write_text("".join(f'"{a}","{b}"\n' for a, b in rows), encoding="utf-8-sig")
    paths = split_classification(str(path), str(tmp_path / "a"), label_column="0", dev=0.2, test=0.1, seed=3)
    parts = {k: read_classification(v, "1", "0") for k, v in paths.items()}
    counts = {k: (sum(x.label == "1" for x in v), sum(x.label == "-1" for x in v)) for k, v in parts.items()}
    assert counts == {"train": (21, 7), "dev": (6, 2), "test": (3, 1)}
    texts = sorted(" ".join(x.tokens) for v in parts.values() for x in v)
    assert texts == sorted(" ".join(b.split()) for _, b in rows)  # every row exactly once
    again = split_classification(str(path), str(tmp_path / "b"), label_column="0", dev=0.2, test=0.1, seed=3)
    assert all(open(paths[k]).read() == open(again[k]).read() for k in paths)
    other = split_classification(str(path), str(tmp_path / "c"), label_column="0", dev=0.2, test=0.1, seed=4)
    assert open(paths["dev"]).read() != open(other["dev"]).read()


def test_split_folders_to_jsonl_through_the_cli(tmp_path, capsys):
    for label in ("sport", "tech"):
        os.makedirs(tmp_path / "bbc" / label)
        for i in range(10):
            (tmp_path / "bbc" / label / f"{i:03d}.txt").write_text(f"{label} story {i}\n\nmore text")
    assert main(["split", str(tmp_path / "bbc"), "--out", str(tmp_path / "out"), "--dev", "0.2", "--test", "0.2"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert sorted(paths) == ["dev", "test", "train"] and paths["train"].endswith("train.jsonl")
    sizes = {k: len(read_classification(v)) for k, v in paths.items()}
    assert sizes == {"train": 12, "dev": 4, "test": 4}
    x = read_classification(paths["dev"])[0]
    assert x.tokens[0] == x.label and x.tokens[-2:] == ["more", "text"]
