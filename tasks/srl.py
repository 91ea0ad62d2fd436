"""Semantic role labelling: ELMo mix + predicate indicator -> deep BiLSTM -> BIO tags per token,
decoded with constrained Viterbi; one frame per predicate (Peters et al. 2018, sec. 5 "SRL";
He et al. 2017 for the tagger).

Each frame is the sentence with one predicate marked by a binary indicator embedding. Tags are
learned with a per-token softmax; decoding finds the best sequence in which no ``I-X`` follows
anything but ``B-X`` / ``I-X`` (tasks.crf.viterbi_decode with 0/-inf transition scores). The
score is conlleval span F1 without the predicate's own ``V`` span, as the CoNLL SRL scorer does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo import ElmoBiLM
from tasks.config import TaskConfig
from tasks.crf import constraint_scores, viterbi_decode
from tasks.data import TaskBatch, Symbols
from tasks.encoder import Dropout, SequenceEncoder, TokenEncoder
from tasks.metrics import span_f1
from tasks.readers import DataError, Instance, read_conll2005_props, read_conll2012_srl
from tasks.tags import allowed_transitions, convert, scheme_labels, split_tag, tags_to_spans

METRIC = "f1"


class SrlTagger(nn.Module):
    def __init__(self, cfg: TaskConfig, num_words: int, labels: Sequence[str],
                 bilm: Optional[ElmoBiLM]) -> None:
        super().__init__()
        self.encoder = TokenEncoder(cfg, num_words, bilm)
        head = cfg.head  # an SrlHead
        self.predicate_embedding = nn.Embedding(2, head.predicate_dim)
        self.dropout = Dropout(head.dropout)
        self.lstm = SequenceEncoder(self.encoder.output_dim + head.predicate_dim, head.hidden_dim,
                                    head.num_lstm_layers, head.dropout, head.lstm_residual)
        self.output = nn.Linear(self.lstm.output_dim, len(labels))
        trans, start, end = constraint_scores(allowed_transitions(labels, "bio"))
        self.register_buffer("transitions", trans, persistent=False)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("end", end, persistent=False)

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """-> tag scores (B, T, K)."""
        x = torch.cat([self.encoder(batch), self.predicate_embedding(batch.predicate)], dim=-1)
        h = self.dropout(self.lstm(self.dropout(x), batch.mask))
        return self.output(h)

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Token cross-entropy, averaged over the real tokens of the batch."""
        logits = self.logits(batch)
        return nn.functional.cross_entropy(logits[batch.mask], batch.tags[batch.mask])

    def predict(self, batch: TaskBatch) -> list[list[int]]:
        scores = self.logits(batch).log_softmax(-1)
        return viterbi_decode(scores.detach(), batch.mask, self.transitions, self.start, self.end)


# -- task glue ---------------------------------------------------------------------------------
def read(path: str, cfg: TaskConfig, with_targets: bool = True) -> list[Instance]:
    """CoNLL-2012 ``*_conll`` (``data.format`` conll2012, or auto) or CoNLL-2005 props (conll2005).

    Prediction needs the predicates, so SRL input files always carry their argument columns."""
    fmt = cfg.data.format
    if fmt == "auto":
        fmt = "conll2012" if path.endswith(("_conll", ".conll", ".gold_conll")) else "conll2005"
    if fmt == "conll2012":
        instances = read_conll2012_srl(path)
    elif fmt == "conll2005":
        instances = read_conll2005_props(path)
    else:
        raise ValueError(f"srl reads data.format conll2012 or conll2005, got {cfg.data.format!r}")
    if not instances:
        raise DataError(f"{path}: no predicates (frames) found")
    return instances


def setup(train: Sequence[Instance], cfg: TaskConfig) -> Symbols:
    cfg.data.scheme = "bio"
    types = {split_tag(t)[1] for x in train for t in x.tags if t != "O"}
    return Symbols(scheme_labels(sorted(types), "bio"), specials=False)


def targets(instances: Sequence[Instance], cfg: TaskConfig) -> list[Instance]:
    return [Instance(x.tokens, tags=convert(x.tags, "bio"), predicate=x.predicate, sentence=x.sentence,
                     source=x.source) for x in instances]


def build(cfg: TaskConfig, num_words: int, labels: Symbols, bilm: Optional[ElmoBiLM]) -> SrlTagger:
    return SrlTagger(cfg, num_words, labels.items, bilm)


def decode(predicted: Sequence[list[int]], labels: Symbols, cfg: TaskConfig) -> list[list[str]]:
    return [[labels.items[k] for k in p] for p in predicted]


def evaluate(instances: Sequence[Instance], predictions: Sequence[list[str]]) -> dict:
    return span_f1([x.tags for x in instances], predictions, ignore_types=("V",))


def bio_to_brackets(tags: Sequence[str]) -> list[str]:
    """BIO tags of one frame -> a CoNLL bracket column: ``(ARG0*``, ``*``, ``*)``, ``(V*)``."""
    column = ["*"] * len(tags)
    for label, start, end in tags_to_spans(tags):
        column[start] = f"({label}" + column[start]
        column[end] = column[end] + ")"
    return column


def write(instances: Sequence[Instance], predictions: Sequence[list[str]], f) -> None:
    """CoNLL-2005 props columns per sentence: word, target (the predicate's word or -), then one
    predicted argument column per predicate (tasks.readers.read_conll2005_props reads it back)."""
    sentences: dict = {}
    for x, tags in zip(instances, predictions):
        sentences.setdefault((x.source, x.sentence), (x.tokens, []))[1].append((x.predicate, tags))
    for tokens, frames in sentences.values():
        frames.sort(key=lambda p: p[0])
        # the predicate is always tagged V in the output, whatever the model guessed there
        columns = [bio_to_brackets([("B-V" if i == p else ("O" if t.endswith("-V") else t))
                                    for i, t in enumerate(tags)]) for p, tags in frames]
        targets_ = {p for p, _ in frames}
        for i, token in enumerate(tokens):
            f.write(" ".join([token, token if i in targets_ else "-"] + [c[i] for c in columns]) + "\n")
        f.write("\n")
