"""conlleval equivalence on hand-made cases (numbers worked out by hand with conlleval's rules)."""

import random

import pytest

from tasks.metrics import classification_scores, conlleval, conlleval_counts, span_f1
from tasks.tags import convert


def test_perfect_and_empty():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC"]]
    r = conlleval(gold, gold)
    assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (100.0, 100.0, 100.0, 100.0)
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"], r["tokens"]) == (2, 2, 2, 4)
    r = conlleval([["O", "O"]], [["O", "O"]])
    assert (r["f1"], r["gold_chunks"], r["accuracy"]) == (0.0, 0, 100.0)


def test_partial_match_counts_and_per_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "B-LOC"]]
    r = conlleval(gold, pred)
    # gold chunks: PER(0-1) LOC(3-4) ORG(6); guessed: PER(0) LOC(3-4) LOC(6); correct: LOC(3-4)
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"]) == (3, 3, 1)
    assert r["precision"] == pytest.approx(100 / 3) and r["recall"] == pytest.approx(100 / 3)
    assert r["accuracy"] == pytest.approx(100 * 5 / 7)
    assert r["per_type"]["LOC"]["precision"] == 50.0 and r["per_type"]["LOC"]["recall"] == 100.0
    assert r["per_type"]["LOC"]["f1"] == pytest.approx(200 / 3)
    assert r["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "guessed": 0}


def test_broken_i_starts():
    # conlleval: I-X after O starts a chunk; I-Y after I-X starts a new chunk of type Y
    gold = [["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"]]
    pred = [["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG"]]
    r = conlleval(gold, pred)
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"]) == (3, 3, 3)
    assert r["f1"] == 100.0 and r["accuracy"] == pytest.approx(100 * 3 / 6)
    # the same I-X run after B-X of another type: I-PER I-PER after B-LOC is a PER chunk of 2
    r = conlleval([["B-LOC", "B-PER", "I-PER"]], [["B-LOC", "I-PER", "I-PER"]])
    assert r["correct_chunks"] == 2
    # an I- continuation that differs only in where the chunk stops is wrong
    r = conlleval([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "B-PER"]])
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"]) == (1, 2, 0)


def test_sentence_breaks_end_chunks_and_hyphenated_types():
    gold = [["B-ARGM-TMP", "I-ARGM-TMP"], ["I-ARGM-TMP"]]
    pred = [["B-ARGM-TMP", "I-ARGM-TMP"], ["I-ARGM-TMP"]]
    r = conlleval(gold, pred)
    assert (r["gold_chunks"], r["correct_chunks"]) == (2, 2) and list(r["per_type"]) == ["ARGM-TMP"]


def test_span_f1_reads_bioul_and_ignores_types():
    gold = [["B-A", "I-A", "O", "B-V", "B-B"]]
    pred_bioul = [["B-A", "L-A", "O", "U-V", "U-A"]]
    r = span_f1(gold, pred_bioul)
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"]) == (3, 3, 2)
    r = span_f1(gold, pred_bioul, ignore_types=("V",))
    assert (r["gold_chunks"], r["guessed_chunks"], r["correct_chunks"]) == (2, 2, 1)
    # S/U are not conlleval tags: raw conlleval merges "U-A U-A" into one chunk, span_f1 does not
    assert conlleval([["B-A", "I-A"]], [["U-A", "U-A"]])["correct_chunks"] == 1
    assert span_f1([["B-A", "I-A"]], [["U-A", "U-A"]])["correct_chunks"] == 0


def test_conlleval_iob1_equals_bio_rewrite_random():
    rng = random.Random(0)
    pool = ["O", "B-A", "I-A", "B-B", "I-B"]
    for _ in range(300):
        n = rng.randint(1, 8)
        gold, pred = [rng.choice(pool) for _ in range(n)], [rng.choice(pool) for _ in range(n)]
        raw = conlleval_counts([gold], [pred])
        bio = conlleval_counts([convert(gold, "bio")], [convert(pred, "bio")])
        assert (raw.correct, raw.gold, raw.guessed) == (bio.correct, bio.gold, bio.guessed)


def test_classification_scores():
    r = classification_scores(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    assert r["accuracy"] == 50.0
    # F1: a = 2*.5*.5/(1) = .5 ; b = 2*.5*1/1.5 = 2/3 ; c = 0
    assert r["macro_f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="3 gold labels but 2"):
        classification_scores(["a", "b", "c"], ["a", "b"])
