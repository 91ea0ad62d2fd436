"""Evaluation: span precision/recall/F1 as CoNLL's ``conlleval`` computes it, and classification scores.

``conlleval`` (Tjong Kim Sang, version 2004-01-26) is the official scorer of CoNLL-2000/2003 and
the number papers report. ``conlleval_counts`` follows its per-token state machine line by line:
a tag is split at its first hyphen (``B-X`` -> ``B``, ``X``), a chunk starts and ends by the rules
of its ``startOfChunk`` / ``endOfChunk`` (which accept IOB1, IOB2 and IOE), sentence breaks end
every chunk, and a guessed chunk is correct when it starts and ends where a gold chunk does, with
the same type. ``span_f1`` first rewrites both sides in BIO (tasks.tags, which reads chunks the
same way and also understands BIOUL; conlleval itself mis-reads S- and E-B sequences), then counts.
All scores are percentages, as conlleval prints them.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple, Sequence

from tasks.tags import convert


def _split(tag: str) -> tuple[str, str]:
    # conlleval: /^([^-]*)-(.*)$/ -> (prefix, type); no hyphen -> (tag, "")
    prefix, sep, typ = tag.partition("-")
    return (prefix, typ) if sep else (tag, "")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    end = (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"),
                              ("E", "E"), ("E", "I"), ("E", "O")}
    if prev_tag not in ("O", ".") and prev_type != typ:
        end = True
    if prev_tag in ("]", "["):
        end = True
    return end


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    start = (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"),
                                ("E", "E"), ("E", "I"), ("O", "E")}
    if tag not in ("O", ".") and prev_type != typ:
        start = True
    if tag in ("[", "]"):
        start = True
    return start


class ChunkCounts(NamedTuple):
    correct: Counter  # type -> correctly guessed chunks
    gold: Counter  # type -> chunks in the gold tags
    guessed: Counter  # type -> chunks in the guessed tags
    correct_tags: int  # tokens whose guessed tag equals the gold tag
    tokens: int


def conlleval_counts(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]]) -> ChunkCounts:
    """Chunk counts of conlleval over sentences of gold and guessed tags (raw conlleval semantics)."""
    if len(gold) != len(guessed):
        raise ValueError(f"{len(gold)} gold sentences but {len(guessed)} guessed ones")
    correct, found_gold, found_guessed = Counter(), Counter(), Counter()
    correct_tags = tokens = 0
    in_correct = False
    last_c, last_c_type, last_g, last_g_type = "O", "", "O", ""
    lines = []
    for k, (gs, ps) in enumerate(zip(gold, guessed)):
        if len(gs) != len(ps):
            raise ValueError(f"sentence {k}: {len(gs)} gold tags but {len(ps)} guessed ones")
        lines.extend((False, g, p) for g, p in zip(gs, ps))
        lines.append((True, "O", "O"))  # the blank line between sentences
    for boundary, gold_tag, guessed_tag in lines:
        c, c_type = _split(gold_tag)
        g, g_type = _split(guessed_tag)
        if in_correct:
            end_c = _end_of_chunk(last_c, c, last_c_type, c_type)
            end_g = _end_of_chunk(last_g, g, last_g_type, g_type)
            if end_c and end_g and last_g_type == last_c_type:
                in_correct = False
                correct[last_c_type] += 1
            elif end_c != end_g or g_type != c_type:
                in_correct = False
        start_c = _start_of_chunk(last_c, c, last_c_type, c_type)
        start_g = _start_of_chunk(last_g, g, last_g_type, g_type)
        if start_c and start_g and g_type == c_type:
            in_correct = True
        if start_c:
            found_gold[c_type] += 1
        if start_g:
            found_guessed[g_type] += 1
        if not boundary:
            correct_tags += int(c == g and c_type == g_type)
            tokens += 1
        last_c, last_c_type, last_g, last_g_type = c, c_type, g, g_type
    if in_correct:
        correct[last_c_type] += 1
    return ChunkCounts(correct, found_gold, found_guessed, correct_tags, tokens)


def _prf(correct: int, guessed: int, gold: int) -> dict:
    precision = 100.0 * correct / guessed if guessed else 0.0
    recall = 100.0 * correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def conlleval(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]]) -> dict:
    """conlleval's report: overall precision/recall/F1 (percent), token accuracy, counts, per type."""
    counts = conlleval_counts(gold, guessed)
    n_correct, n_guessed, n_gold = (sum(counts.correct.values()), sum(counts.guessed.values()),
                                    sum(counts.gold.values()))
    report = _prf(n_correct, n_guessed, n_gold)
    report.update(accuracy=100.0 * counts.correct_tags / counts.tokens if counts.tokens else 0.0,
                  tokens=counts.tokens, gold_chunks=n_gold, guessed_chunks=n_guessed,
                  correct_chunks=n_correct)
    report["per_type"] = {
        t: {**_prf(counts.correct[t], counts.guessed[t], counts.gold[t]), "guessed": counts.guessed[t]}
        for t in sorted(set(counts.gold) | set(counts.guessed))}
    return report


def span_f1(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]],
            ignore_types: Sequence[str] = ()) -> dict:
    """conlleval on both sides rewritten in BIO (any scheme in); spans of ``ignore_types`` dropped
    (SRL scorers leave out the predicate's own ``V`` span)."""
    def prepare(tags: Sequence[str]) -> list[str]:
        tags = convert(tags, "bio")
        return ["O" if t != "O" and t[2:] in ignore_types else t for t in tags]

    return conlleval([prepare(t) for t in gold], [prepare(t) for t in guessed])


def format_conlleval(report: dict) -> str:
    """The report in conlleval's own text layout."""
    lines = [f"processed {report['tokens']} tokens with {report['gold_chunks']} phrases; "
             f"found: {report['guessed_chunks']} phrases; correct: {report['correct_chunks']}."]
    if report["tokens"]:
        lines.append(f"accuracy: {report['accuracy']:6.2f}%; precision: {report['precision']:6.2f}%; "
                     f"recall: {report['recall']:6.2f}%; FB1: {report['f1']:6.2f}")
    for t, r in report["per_type"].items():
        lines.append(f"{t:>17}: precision: {r['precision']:6.2f}%; recall: {r['recall']:6.2f}%; "
                     f"FB1: {r['f1']:6.2f}  {r['guessed']}")
    return "\n".join(lines)


def classification_scores(gold: Sequence[str], guessed: Sequence[str]) -> dict:
    """Accuracy and macro-averaged F1 (over the labels seen in gold or guessed), in percent."""
    if len(gold) != len(guessed):
        raise ValueError(f"{len(gold)} gold labels but {len(guessed)} guessed ones")
    per_label = {}
    for label in sorted(set(gold) | set(guessed)):
        tp = sum(g == label and p == label for g, p in zip(gold, guessed))
        per_label[label] = _prf(tp, sum(p == label for p in guessed), sum(g == label for g in gold))
    accuracy = 100.0 * sum(g == p for g, p in zip(gold, guessed)) / len(gold) if gold else 0.0
    macro = sum(r["f1"] for r in per_label.values()) / len(per_label) if per_label else 0.0
    return {"accuracy": accuracy, "macro_f1": macro, "examples": len(gold), "per_label": per_label}
