"""Data readers: CoNLL-2003 columns, CoNLL-2012 / CoNLL-2005 SRL, classification files, Hugging Face sets.

Every reader returns a list of ``Instance`` (tokens plus the task's target). Malformed input raises
``DataError`` naming the file and line. Formats:

- CoNLL-2003: whitespace-separated columns, one token per line, blank lines between sentences,
  ``-DOCSTART-`` lines skipped; the tag column is any column (default the last).
- CoNLL-2012 ``*_conll``: columns ``doc part index word POS parse lemma frameset sense speaker NE
  arg_1 .. arg_N coref``, one argument column per predicate, in bracket notation (``(ARG0*``,
  ``*``, ``*)``, ``(V*)``). One frame per predicate: the column turned into BIO tags
  (``B-ARG0 I-ARG0 ... B-V``). ``#begin``/``#end document`` lines are skipped.
- CoNLL-2005 props: columns ``word target arg_1 .. arg_N`` (the ``words`` and ``props`` files
  pasted together), or a props file (``target arg_1 ..``) plus a separate words file.
- Classification: CSV / TSV (with or without a header; columns by name or 0-based index),
  JSON-lines (keys), or a folder with one sub-folder per class holding one text file per example.
- ``hf:NAME[:CONFIG]:SPLIT`` loads a Hugging Face data set through ``datasets`` (needs the hub or
  its local cache).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from elmo.io import drop_byte_order_mark
from elmo.tokenize import tokenize
from tasks.tags import split_tag


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


@dataclass
class Instance:
    tokens: list
    tags: Optional[list] = None  # NER / SRL gold tags
    label: Optional[str] = None  # classification gold label
    predicate: Optional[int] = None  # SRL: index of the predicate token
    sentence: int = 0  # SRL: index of the sentence the frame belongs to (frames share it)
    source: str = ""  # "file:line" where the example starts


def _not_utf8(path: str, number: int, byte: int, column: int) -> DataError:
    return DataError(f"{path}:{number}: byte {byte:#04x} at column {column} is not UTF-8; convert "
                     "the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, split at ``\\n`` only: a lone ``\\r`` inside a line
    does not split it (a ``\\r\\n`` ending is removed). Bytes that are not UTF-8 raise a
    ``DataError`` naming the file and line instead of being replaced."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, number, raw[e.start], e.start + 1) from None
            if number == 1:
                line = drop_byte_order_mark(line)
            yield number, line.removesuffix("\n").removesuffix("\r")


def read_text(path: str) -> str:
    """A whole UTF-8 file (byte-order mark dropped, newlines as they are); bytes that are not
    UTF-8 raise a ``DataError`` naming the file and line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return drop_byte_order_mark(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, raw[e.start],
                        e.start - line_start + 1) from None


def _blocks(path: str, comment: Optional[str] = None) -> Iterator[tuple[int, list[tuple[int, list[str]]]]]:
    """Blank-line separated blocks of whitespace-split lines: (first line number, [(line, columns)])."""
    block: list[tuple[int, list[str]]] = []
    for number, line in text_lines(path):
        if comment and line.startswith(comment):
            continue
        columns = line.split()
        if columns:
            block.append((number, columns))
        elif block:
            yield block[0][0], block
            block = []
    if block:
        yield block[0][0], block


def _check_width(path: str, block: list, width: Optional[int], what: str) -> int:
    for number, cols in block:
        if width is None:
            width = len(cols)
        if len(cols) != width:
            raise DataError(f"{path}:{number}: expected {width} columns ({what}), found {len(cols)}: "
                            f"{' '.join(cols)[:80]!r}")
    return width


def read_conll2003(path: str, tag_column: int = -1, with_tags: bool = True) -> list[Instance]:
    """CoNLL-2003 style columns -> one Instance per sentence (tags None when ``with_tags`` is False)."""
    instances, width = [], None
    for start, block in _blocks(path):
        block = [(n, cols) for n, cols in block if cols[0] != "-DOCSTART-"]
        if not block:
            continue
        width = _check_width(path, block, width, "the same number as the file's first line")
        tokens = [cols[0] for _, cols in block]
        tags = None
        if with_tags:
            if width < 2:
                raise DataError(f"{path}:{block[0][0]}: one column only; a tagged file needs the token "
                                "first and a tag column (or predict on it without tags)")
            tags = []
            for number, cols in block:
                try:
                    tag = cols[tag_column]
                    split_tag(tag)
                except IndexError:
                    raise DataError(f"{path}:{number}: no column {tag_column} (the line has {len(cols)})") from None
                except ValueError as e:
                    raise DataError(f"{path}:{number}: {e}; is tag_column={tag_column} the tag column?") from None
                tags.append(tag)
        instances.append(Instance(tokens, tags=tags, source=f"{path}:{start}"))
    return instances


_BRACKET = re.compile(r"^(?:\((?P<open>[^()*]+))?\*(?P<label>[^()*]*)(?P<close>\))?$")


def brackets_to_bio(column: Sequence[str], where: Sequence[str]) -> list[str]:
    """One bracketed argument column (``(ARG0*``, ``*``, ``*)``, ``(V*)``) -> BIO tags.

    ``where[i]`` names the line of token i for error messages. CoNLL-2004's ``*ARG0)`` closing
    form is accepted too."""
    tags, open_label = [], None
    for annotation, place in zip(column, where):
        m = _BRACKET.match(annotation)
        if m is None:
            raise DataError(f"{place}: argument annotation {annotation!r} is not of the form '(LABEL*', "
                            "'*', '*)' or '(LABEL*)'")
        if m["open"]:
            if open_label is not None:
                raise DataError(f"{place}: argument {m['open']!r} opens inside {open_label!r} "
                                "(nested arguments are not allowed in one column)")
            open_label = m["open"]
            tags.append(f"B-{open_label}")
        else:
            tags.append(f"I-{open_label}" if open_label is not None else "O")
        if m["close"]:
            if open_label is None:
                raise DataError(f"{place}: ')' closes an argument that was never opened")
            open_label = None
    if open_label is not None:
        raise DataError(f"{where[-1]}: argument {open_label!r} is never closed by the sentence end")
    return tags


def _frames(path: str, start: int, words: list[str], columns: list[list[str]], where: list[str],
            sentence: int) -> list[Instance]:
    frames = []
    for k, column in enumerate(columns):
        tags = brackets_to_bio(column, where)
        verbs = [i for i, t in enumerate(tags) if t == "B-V"]
        if len(verbs) != 1:
            raise DataError(f"{path}:{start}: argument column {k + 1} of this sentence has "
                            f"{len(verbs)} predicates (V), expected exactly one")
        frames.append(Instance(list(words), tags=tags, predicate=verbs[0], sentence=sentence,
                               source=f"{path}:{start}"))
    return frames


def read_conll2012_srl(path: str) -> list[Instance]:
    """CoNLL-2012 ``*_conll`` file -> one Instance per predicate (frame), in file order."""
    instances, sentence = [], 0
    for start, block in _blocks(path, comment="#"):
        width = _check_width(path, block, None, "the same number as the sentence's first line")
        if width < 12:
            raise DataError(f"{path}:{start}: {width} columns; a CoNLL-2012 *_conll line has at least "
                            "12 (doc part index word POS parse lemma frameset sense speaker NE ... coref)")
        words = [cols[3] for _, cols in block]
        where = [f"{path}:{n}" for n, _ in block]
        columns = [[cols[c] for _, cols in block] for c in range(11, width - 1)]
        instances.extend(_frames(path, start, words, columns, where, sentence))
        sentence += 1
    return instances


def read_conll2005_props(path: str, words_path: Optional[str] = None) -> list[Instance]:
    """CoNLL-2005: ``word target args..`` columns, or a props file plus a words file (first column)."""
    word_blocks = list(_blocks(words_path)) if words_path else None
    instances, sentence = [], 0
    for k, (start, block) in enumerate(_blocks(path)):
        width = _check_width(path, block, None, "the same number as the sentence's first line")
        first = 0 if word_blocks is not None else 1
        if word_blocks is not None:
            if k >= len(word_blocks) or len(word_blocks[k][1]) != len(block):
                raise DataError(f"{path}:{start}: sentence {k + 1} does not line up with {words_path} "
                                "(different number of sentences or tokens)")
            words = [cols[0] for _, cols in word_blocks[k][1]]
        else:
            words = [cols[0] for _, cols in block]
        where = [f"{path}:{n}" for n, _ in block]
        columns = [[cols[c] for _, cols in block] for c in range(first + 1, width)]
        n_targets = sum(cols[first] != "-" for _, cols in block)
        if n_targets != len(columns):
            raise DataError(f"{path}:{start}: {n_targets} predicates in the target column but "
                            f"{len(columns)} argument columns")
        instances.extend(_frames(path, start, words, columns, where, sentence))
        sentence += 1
    return instances


def _column(header: Optional[list[str]], name: str, path: str, what: str) -> int:
    if name.lstrip("-").isdigit():
        return int(name)
    if header is None or name not in header:
        raise DataError(f"{path}:1: no {what} column named {name!r} in the header {header}; pass the "
                        f"column name or a 0-based index (e.g. --set {what}_column=1)")
    return header.index(name)


def read_classification(path: str, text_column: str = "text", label_column: str = "label",
                        tokenizer: str = "whitespace", max_tokens: int = 0,
                        with_labels: bool = True) -> list[Instance]:
    """CSV / TSV / JSON-lines file or class folders -> one Instance per example."""
    def make(text: str, label, where: str) -> Instance:
        if not isinstance(text, str):
            raise DataError(f"{where}: the text must be a string, got {type(text).__name__}")
        tokens = tokenize(text, tokenizer)
        if not tokens:
            raise DataError(f"{where}: empty text")
        if with_labels and (label is None or str(label).strip() == ""):
            raise DataError(f"{where}: missing label")
        return Instance(tokens[:max_tokens] if max_tokens else tokens,
                        label=str(label).strip() if with_labels else None, source=where)

    if os.path.isdir(path):
        classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if not classes:
            raise DataError(f"{path}: a classification folder needs one sub-folder per class")
        out = []
        for c in classes:
            for name in sorted(os.listdir(os.path.join(path, c))):
                file = os.path.join(path, c, name)
                out.append(make(read_text(file), c, file))
        return out
    if path.endswith((".jsonl", ".json")):
        out = []
        for number, line in text_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON object ({e})") from None
            if not isinstance(row, dict) or text_column not in row or (with_labels and label_column not in row):
                raise DataError(f"{path}:{number}: expected a JSON object with keys {text_column!r}"
                                f"{' and ' + repr(label_column) if with_labels else ''}")
            out.append(make(row[text_column], row.get(label_column), f"{path}:{number}"))
        return out
    delimiter = "\t" if path.endswith((".tsv", ".tab")) else ","
    rows = list(csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter))
    # a header row exists when a column is named; the label column counts only when labels are read
    numeric = [text_column] + ([label_column] if with_labels else [])
    named = not all(c.lstrip("-").isdigit() for c in numeric)
    header = rows[0] if named and rows else None
    t = _column(header, text_column, path, "text")
    lab = _column(header, label_column, path, "label") if with_labels else None
    out = []
    for number, row in enumerate(rows[1:] if header else rows, 2 if header else 1):
        # csv rows may span lines (newlines inside quotes): ``number`` counts rows, as reported below
        if not row:
            continue
        need = max(t, lab if lab is not None else 0) + 1
        if len(row) < need:
            raise DataError(f"{path}: row {number}: {len(row)} fields, expected at least {need} "
                            f"(text column {t}, label column {lab})")
        out.append(make(row[t], row[lab] if lab is not None else None, f"{path}: row {number}"))
    return out


def read_hf(spec: str, task: str, text_column: str = "text", label_column: str = "label",
            tag_column: str = "ner_tags") -> list[Instance]:
    """``hf:NAME[:CONFIG]:SPLIT`` -> instances through ``datasets.load_dataset``."""
    import datasets

    parts = spec[3:].split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{spec!r}: expected hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    dataset = datasets.load_dataset(parts[0], *parts[1:-1], split=parts[-1])
    return from_hf_dataset(dataset, task, text_column, label_column, tag_column, source=spec)


def from_hf_dataset(dataset, task: str, text_column: str = "text", label_column: str = "label",
                    tag_column: str = "ner_tags", source: str = "hf") -> list[Instance]:
    """A ``datasets.Dataset`` -> instances (class-label ids become their names)."""
    features = dataset.features

    def names(column: str):
        feature = features[column]
        feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
        return getattr(feature, "names", None)

    if task == "ner":
        tag_names = names(tag_column)
        return [Instance(list(row["tokens"]),
                         tags=[tag_names[t] if tag_names else str(t) for t in row[tag_column]],
                         source=f"{source}#{i}") for i, row in enumerate(dataset)]
    if task == "classify":
        label_names = names(label_column)
        return [Instance(tokenize(row[text_column]) if isinstance(row[text_column], str) else list(row[text_column]),
                         label=label_names[row[label_column]] if label_names else str(row[label_column]),
                         source=f"{source}#{i}") for i, row in enumerate(dataset)]
    raise ValueError(f"Hugging Face data sets are read for tasks ner and classify, not {task!r}")
