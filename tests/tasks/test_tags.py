"""Tag schemes: spans read as conlleval reads chunks, conversions, allowed transitions."""

import itertools

import pytest

from tasks.tags import (Span, allowed_transitions, convert, detect_scheme, is_valid, scheme_labels,
                        spans_to_tags, split_tag, tags_to_spans)


def test_spans_bio_iob1_bioul():
    assert tags_to_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [Span("PER", 0, 1), Span("LOC", 3, 3)]
    # IOB1: I- starts a chunk, B- separates two adjacent chunks of the same type
    assert tags_to_spans(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [
        Span("PER", 0, 1), Span("PER", 2, 2), Span("LOC", 4, 4)]
    # broken starts: I-X after O and after another type start chunks
    assert tags_to_spans(["O", "I-ORG", "I-MISC", "I-MISC"]) == [Span("ORG", 1, 1), Span("MISC", 2, 3)]
    assert tags_to_spans(["B-A", "L-A", "U-A", "I-A", "E-B", "S-B"]) == [
        Span("A", 0, 1), Span("A", 2, 2), Span("A", 3, 3), Span("B", 4, 4), Span("B", 5, 5)]
    assert tags_to_spans(["B-ARGM-TMP", "I-ARGM-TMP"]) == [Span("ARGM-TMP", 0, 1)]


def test_conversions_hand_made():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-MISC"]
    assert convert(iob1, "bio") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-MISC"]
    assert convert(iob1, "bioul") == ["B-PER", "L-PER", "U-PER", "O", "U-LOC", "U-MISC"]
    assert convert(convert(iob1, "bioul"), "iob1") == iob1
    assert convert(["B-X", "I-X", "I-X", "B-X"], "iob1") == ["I-X", "I-X", "I-X", "B-X"]


def test_round_trips_exhaustive():
    pool = ["O", "B-A", "I-A", "B-B", "I-B", "L-A", "U-B"]
    for n in range(1, 5):
        for tags in itertools.product(pool, repeat=n):
            spans = tags_to_spans(tags)
            for scheme in ("iob1", "bio", "bioul"):
                out = convert(tags, scheme)
                assert tags_to_spans(out) == spans
                assert is_valid(out, scheme)


@pytest.mark.parametrize("scheme", ["iob1", "bio", "bioul"])
def test_allowed_transitions_match_well_formed_sequences(scheme):
    labels = scheme_labels(["A", "B"], scheme)
    t = allowed_transitions(labels, scheme)
    for n in range(1, 5):
        for seq in itertools.product(range(len(labels)), repeat=n):
            ok = bool(t.start[seq[0]]) and bool(t.end[seq[-1]]) and all(
                bool(t.allowed[i, j]) for i, j in zip(seq, seq[1:]))
            assert ok == is_valid([labels[k] for k in seq], scheme), [labels[k] for k in seq]


def test_scheme_labels_and_detection():
    assert scheme_labels(["PER", "LOC"], "bioul") == [
        "O", "B-LOC", "I-LOC", "L-LOC", "U-LOC", "B-PER", "I-PER", "L-PER", "U-PER"]
    assert len(scheme_labels(["PER", "LOC", "ORG", "MISC"], "bio")) == 9
    assert detect_scheme([["B-A", "I-A", "O"]]) == "bio"
    assert detect_scheme([["O", "I-A"], ["B-A"]]) == "iob1"
    assert detect_scheme([["U-A"]]) == "bioul"


def test_bad_tags_and_spans():
    with pytest.raises(ValueError, match="'X-PER'"):
        split_tag("X-PER")
    with pytest.raises(ValueError, match="'B-'"):
        split_tag("B-")
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_tags([Span("A", 0, 2), Span("B", 1, 1)], 3)
    with pytest.raises(ValueError, match="unknown tag scheme 'bilou'"):
        convert(["O"], "bilou")
