"""Span tagging schemes: IOB1, BIO (IOB2) and BIOUL (IOBES), conversion and allowed transitions.

A tag is ``O`` or ``P-TYPE`` with the prefix P one of B, I, L, U (E and S are read as L and U).
Spans are read the way CoNLL's ``conlleval`` reads chunks, so any of these schemes, and broken
sequences too, give the chunks that the official scorer would count:

- ``B-X`` always starts a chunk;
- ``I-X`` continues the open chunk when that chunk has type X and has not been closed, and
  otherwise starts a new chunk (an ``I-X`` after ``O`` or after another type starts a chunk; this
  is also how IOB1 marks chunks);
- ``L-X`` continues like ``I-X`` and then closes the chunk; ``U-X`` is a chunk of one token.

Converting to a scheme writes those spans back: BIO starts every chunk with B; IOB1 uses B only for
a chunk right after a chunk of the same type; BIOUL marks the last token L and one-token chunks U.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

SCHEMES = ("iob1", "bio", "bioul")
_PREFIXES = {"B": "B", "I": "I", "L": "L", "U": "U", "E": "L", "S": "U"}


class Span(NamedTuple):
    label: str
    start: int  # first token
    end: int  # last token (inclusive)


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``. E/S read as L/U.

    Raises ValueError for anything else (a clear message names the tag)."""
    if tag == "O":
        return "O", ""
    prefix, sep, label = tag.partition("-")
    if not sep or not label or prefix not in _PREFIXES:
        raise ValueError(f"tag {tag!r} is not 'O' or PREFIX-TYPE with PREFIX one of B, I, L, U, E, S")
    return _PREFIXES[prefix], label


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    return scheme


def tags_to_spans(tags: Sequence[str]) -> list[Span]:
    """Tags of one sentence -> its spans, in order (conlleval's chunk rules, see module doc)."""
    spans: list[Span] = []
    label, start, closed = "", -1, True
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag)
        continues = prefix in ("I", "L") and not closed and typ == label
        if not continues and not closed:
            spans.append(Span(label, start, i - 1))
            closed = True
        if prefix == "O":
            continue
        if not continues:
            label, start, closed = typ, i, False
        if prefix in ("L", "U"):
            spans.append(Span(label, start, i))
            closed = True
    if not closed:
        spans.append(Span(label, start, len(tags) - 1))
    return spans


def spans_to_tags(spans: Sequence[Span], length: int, scheme: str = "bio") -> list[str]:
    """Spans (non-overlapping) -> ``length`` tags in ``scheme``."""
    check_scheme(scheme)
    tags = ["O"] * length
    previous_end, previous_label = -2, None
    for label, start, end in sorted(spans, key=lambda s: s.start):
        if start < 0 or end >= length or end < start or start <= previous_end:
            raise ValueError(f"span ({label}, {start}, {end}) is out of range or overlaps another "
                             f"in a sentence of {length} tokens")
        if scheme == "bioul":
            if start == end:
                tags[start] = f"U-{label}"
            else:
                tags[start], tags[end] = f"B-{label}", f"L-{label}"
                for i in range(start + 1, end):
                    tags[i] = f"I-{label}"
        else:
            first = "B" if scheme == "bio" or (previous_end == start - 1 and previous_label == label) else "I"
            tags[start] = f"{first}-{label}"
            for i in range(start + 1, end + 1):
                tags[i] = f"I-{label}"
        previous_end, previous_label = end, label
    return tags


def convert(tags: Sequence[str], scheme: str) -> list[str]:
    """Re-tag one sentence in ``scheme`` keeping its (conlleval) spans."""
    return spans_to_tags(tags_to_spans(tags), len(tags), scheme)


def detect_scheme(sentences: Sequence[Sequence[str]]) -> str:
    """The scheme the data uses: bioul if any L/U/E/S tag, iob1 if any chunk starts with I-, else bio."""
    iob1 = False
    for tags in sentences:
        previous = ("O", "")
        for tag in tags:
            prefix, typ = split_tag(tag)
            if prefix in ("L", "U"):
                return "bioul"
            if prefix == "I" and (previous[0] == "O" or previous[1] != typ):
                iob1 = True
            previous = (prefix, typ)
    return "iob1" if iob1 else "bio"


def scheme_labels(types: Sequence[str], scheme: str) -> list[str]:
    """All tags of ``scheme`` over the span types, ``O`` first then by type."""
    check_scheme(scheme)
    prefixes = "BILU" if scheme == "bioul" else "BI"
    return ["O"] + [f"{p}-{t}" for t in sorted(set(types)) for p in prefixes]


class Transitions(NamedTuple):
    allowed: torch.Tensor  # (K, K) bool: allowed[i, j] = tag j may follow tag i
    start: torch.Tensor  # (K,) bool: may begin a sentence
    end: torch.Tensor  # (K,) bool: may end a sentence


def allowed_transitions(labels: Sequence[str], scheme: str) -> Transitions:
    """Which tag may follow which in ``scheme`` (every sequence they allow is well formed)."""
    check_scheme(scheme)
    parsed = [split_tag(t) for t in labels]
    K = len(labels)
    allowed = torch.zeros(K, K, dtype=torch.bool)
    start = torch.zeros(K, dtype=torch.bool)
    end = torch.zeros(K, dtype=torch.bool)
    for j, (p, t) in enumerate(parsed):
        if scheme == "bioul" and p not in "BILUO":
            raise ValueError(f"tag {labels[j]!r} does not belong to the bioul scheme")
        if scheme != "bioul" and p not in "BIO":
            raise ValueError(f"tag {labels[j]!r} does not belong to the {scheme} scheme (B, I, O only)")
        if scheme == "bioul":
            start[j], end[j] = p in "OBU", p in "OLU"
        else:
            start[j], end[j] = (p in "OB") if scheme == "bio" else (p in "OI"), True
        for i, (q, s) in enumerate(parsed):
            if scheme == "bioul":
                ok = (p in "IL" and q in "BI" and s == t) or (p in "OBU" and q in "OLU")
            elif scheme == "bio":
                ok = p in "OB" or (p == "I" and q in "BI" and s == t)
            else:  # iob1: B-X only right after a chunk of type X
                ok = p in "OI" or (p == "B" and q in "BI" and s == t)
            allowed[i, j] = ok
    return Transitions(allowed, start, end)


def is_valid(tags: Sequence[str], scheme: str) -> bool:
    """True when ``tags`` is a well-formed sequence of ``scheme`` (spans_to_tags would write it)."""
    try:
        return list(tags) == spans_to_tags(tags_to_spans(tags), len(tags), scheme)
    except ValueError:
        return False
