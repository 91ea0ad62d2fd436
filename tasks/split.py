"""Deterministic train/dev/test splits of classification data that comes as one file or folder.

Pang & Lee's polarity sentences are one CSV and the BBC News topics one folder per class; the
task models need three files. ``split_classification`` shuffles the examples with a seed
(stratified: each label is split in the same proportions) and writes ``train``, ``dev`` and
``test`` files: CSV/TSV rows unchanged (read them with the same columns), JSON-lines objects
unchanged, and class folders as JSON-lines ``{"text", "label"}``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from typing import Callable

from elmo.io import drop_byte_order_mark, write_text_atomic
from tasks.readers import DataError


def _stratified(rows: list, label_of: Callable, dev: float, test: float, seed: int) -> dict:
    by_label: dict = {}
    for row in rows:
        by_label.setdefault(label_of(row), []).append(row)
    rng = random.Random(seed)
    parts: dict = {"train": [], "dev": [], "test": []}
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_dev, n_test = round(dev * len(group)), round(test * len(group))
        parts["dev"] += group[:n_dev]
        parts["test"] += group[n_dev : n_dev + n_test]
        parts["train"] += group[n_dev + n_test :]
    for part in parts.values():
        rng.shuffle(part)
    return parts


def _write_atomic(path: str, text: str) -> None:
    write_text_atomic(path, text)


def split_classification(path: str, out_dir: str, label_column: str = "label", dev: float = 0.1,
                         test: float = 0.1, seed: int = 0) -> dict:
    """Write OUT/{train,dev,test}.<ext>; returns {part: path}. ``label_column`` is a header name or
    a 0-based index for CSV/TSV (as ``read_classification`` takes it), a key for JSON-lines."""
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise ValueError(f"dev and test must be fractions with dev + test < 1, got {dev} and {test}")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.isdir(path):
        rows = []
        for label in sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))):
            for name in sorted(os.listdir(os.path.join(path, label))):
                with open(os.path.join(path, label, name), encoding="utf-8", errors="replace") as f:
                    text = drop_byte_order_mark(f.read())
                    rows.append(json.dumps({"text": text, "label": label}, ensure_ascii=False))
        if not rows:
            raise DataError(f"{path}: no class folders with files found")
        parts = _stratified(rows, lambda r: json.loads(r)["label"], dev, test, seed)
        ext, render = "jsonl", lambda part: "".join(r + "\n" for r in part)
    elif path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8-sig") as f:
            rows = [line.rstrip("\n") for line in f if line.strip()]
        parts = _stratified(rows, lambda r: str(json.loads(r).get(label_column)), dev, test, seed)
        ext, render = "jsonl", lambda part: "".join(r + "\n" for r in part)
    else:
        delimiter = "\t" if path.endswith((".tsv", ".tab")) else ","
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
        header = None
        if not label_column.lstrip("-").isdigit():
            header, rows = rows[0], rows[1:]
            if label_column not in header:
                raise DataError(f"{path}:1: no label column named {label_column!r} in the header {header}")
        column = header.index(label_column) if header else int(label_column)
        parts = _stratified(rows, lambda r: r[column], dev, test, seed)
        ext = "tsv" if delimiter == "\t" else "csv"

        def render(part: list) -> str:
            buffer = io.StringIO()
            writer = csv.writer(buffer, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\n")
            writer.writerows(([header] if header else []) + part)
            return buffer.getvalue()

    paths = {}
    for name, part in parts.items():
        paths[name] = os.path.join(out_dir, f"{name}.{ext}")
        _write_atomic(paths[name], render(part))
    return paths
