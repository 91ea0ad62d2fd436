"""Named entity recognition: ELMo mix (+ word embeddings) -> BiLSTM -> linear -> CRF (Peters et al.
2018, sec. 5 "NER"; the BiLSTM-CRF of Lample et al. 2016).

The model learns in its own tag scheme (BIOUL by default) with CRF transitions constrained to
that scheme, decodes with Viterbi, and reports and writes tags in the training data's scheme.
Scores are conlleval's span F1 (tasks.metrics).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo import ElmoBiLM
from tasks.config import TaskConfig
from tasks.crf import ConditionalRandomField
from tasks.data import TaskBatch, Symbols
from tasks.encoder import Dropout, SequenceEncoder, TokenEncoder
from tasks.metrics import span_f1
from tasks.readers import DataError, Instance, read_conll2003, read_hf
from tasks.tags import allowed_transitions, convert, detect_scheme, scheme_labels, split_tag

METRIC = "f1"


class CrfTagger(nn.Module):
    def __init__(self, cfg: TaskConfig, num_words: int, labels: Sequence[str],
                 bilm: Optional[ElmoBiLM]) -> None:
        super().__init__()
        self.encoder = TokenEncoder(cfg, num_words, bilm)
        head = cfg.head  # a NerHead
        self.dropout = Dropout(head.dropout)
        self.lstm = SequenceEncoder(self.encoder.output_dim, head.hidden_dim, head.num_lstm_layers, head.dropout,
                                    head.lstm_residual)
        self.output = nn.Linear(self.lstm.output_dim, len(labels))
        self.crf = ConditionalRandomField(len(labels), allowed_transitions(labels, head.tag_scheme))

    def emissions(self, batch: TaskBatch) -> torch.Tensor:
        """-> tag scores (B, T, K)."""
        x = self.dropout(self.encoder(batch))  # (B, T, D)
        h = self.dropout(self.lstm(x, batch.mask))  # (B, T, 2H)
        return self.output(h)

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Negative log-likelihood per sentence, averaged over the batch."""
        return -self.crf(self.emissions(batch), batch.tags, batch.mask).mean()

    def predict(self, batch: TaskBatch) -> list[list[int]]:
        return self.crf.decode(self.emissions(batch), batch.mask)


# -- task glue (the same functions in ner, srl and classify) ---------------------------------
def read(path: str, cfg: TaskConfig, with_targets: bool = True) -> list[Instance]:
    if path.startswith("hf:"):
        return read_hf(path, "ner")
    if cfg.data.format not in ("auto", "conll2003"):
        raise ValueError(f"ner reads data.format conll2003, got {cfg.data.format!r}")
    instances = read_conll2003(path, cfg.data.tag_column, with_tags=with_targets)
    if not instances:
        raise DataError(f"{path}: no sentences found")
    return instances


def setup(train: Sequence[Instance], cfg: TaskConfig) -> Symbols:
    """Record the data's scheme in ``cfg`` and return the label vocabulary of the model's scheme."""
    cfg.data.scheme = cfg.data.scheme or detect_scheme([x.tags for x in train])
    types = {split_tag(t)[1] for x in train for t in x.tags if t != "O"}
    return Symbols(scheme_labels(sorted(types), cfg.head.tag_scheme), specials=False)


def targets(instances: Sequence[Instance], cfg: TaskConfig) -> list[Instance]:
    """Instances with their tags in the model's scheme."""
    return [Instance(x.tokens, tags=convert(x.tags, cfg.head.tag_scheme), source=x.source) for x in instances]


def build(cfg: TaskConfig, num_words: int, labels: Symbols, bilm: Optional[ElmoBiLM]) -> CrfTagger:
    return CrfTagger(cfg, num_words, labels.items, bilm)


def decode(predicted: Sequence[list[int]], labels: Symbols, cfg: TaskConfig) -> list[list[str]]:
    scheme = cfg.data.scheme or "bio"
    return [convert([labels.items[k] for k in p], scheme) for p in predicted]


def evaluate(instances: Sequence[Instance], predictions: Sequence[list[str]]) -> dict:
    return span_f1([x.tags for x in instances], predictions)


def write(instances: Sequence[Instance], predictions: Sequence[list[str]], f) -> None:
    """CoNLL columns: token, gold tag (when known), predicted tag; a blank line after each sentence
    (conlleval reads this file as it is)."""
    for x, tags in zip(instances, predictions):
        for i, (token, tag) in enumerate(zip(x.tokens, tags)):
            f.write(f"{token} {x.tags[i]} {tag}\n" if x.tags is not None else f"{token} {tag}\n")
        f.write("\n")
