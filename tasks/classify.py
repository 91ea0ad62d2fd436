"""Text classification: ELMo mix -> BiLSTM -> max and mean pooling -> MLP (Peters et al. 2018,
sec. 5 "sentiment analysis", simplified from the biattentive classification network).

Labels come from the training data. Scores are accuracy and macro-averaged F1.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo import ElmoBiLM
from tasks.config import TaskConfig
from tasks.data import TaskBatch, Symbols
from tasks.encoder import Dropout, SequenceEncoder, TokenEncoder
from tasks.metrics import classification_scores
from tasks.readers import DataError, Instance, read_classification, read_hf

METRIC = "accuracy"


class Classifier(nn.Module):
    def __init__(self, cfg: TaskConfig, num_words: int, num_labels: int, bilm: Optional[ElmoBiLM]) -> None:
        super().__init__()
        self.encoder = TokenEncoder(cfg, num_words, bilm)
        head = cfg.head  # a ClassifyHead
        self.dropout = Dropout(head.dropout)
        self.lstm = SequenceEncoder(self.encoder.output_dim, head.hidden_dim, head.num_lstm_layers, head.dropout,
                                    head.lstm_residual)
        self.mlp = nn.Sequential(nn.Linear(2 * self.lstm.output_dim, head.mlp_dim), nn.ReLU(),
                                 Dropout(head.dropout), nn.Linear(head.mlp_dim, num_labels))

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """-> label scores (B, C)."""
        h = self.lstm(self.dropout(self.encoder(batch)), batch.mask)  # (B, T, 2H)
        m = batch.mask.unsqueeze(-1)  # (B, T, 1)
        max_pool = h.masked_fill(~m, float("-inf")).amax(dim=1)  # (B, 2H)
        mean_pool = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, 2H)
        return self.mlp(self.dropout(torch.cat([max_pool, mean_pool], dim=-1)))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(batch), batch.labels)

    def predict(self, batch: TaskBatch) -> list[int]:
        return self.logits(batch).argmax(-1).tolist()


# -- task glue ---------------------------------------------------------------------------------
def read(path: str, cfg: TaskConfig, with_targets: bool = True) -> list[Instance]:
    if path.startswith("hf:"):
        return read_hf(path, "classify", cfg.data.text_column, cfg.data.label_column)
    if cfg.data.format not in ("auto", "csv", "tsv", "jsonl", "folder"):
        raise ValueError(f"classify reads data.format csv, tsv, jsonl or folder, got {cfg.data.format!r}")
    instances = read_classification(path, cfg.data.text_column, cfg.data.label_column, cfg.data.tokenizer,
                                    cfg.data.max_tokens, with_labels=with_targets)
    if not instances:
        raise DataError(f"{path}: no examples found")
    return instances


def setup(train: Sequence[Instance], cfg: TaskConfig) -> Symbols:
    return Symbols(sorted({x.label for x in train}), specials=False)


def targets(instances: Sequence[Instance], cfg: TaskConfig) -> list[Instance]:
    return list(instances)


def build(cfg: TaskConfig, num_words: int, labels: Symbols, bilm: Optional[ElmoBiLM]) -> Classifier:
    return Classifier(cfg, num_words, len(labels), bilm)


def decode(predicted: Sequence[int], labels: Symbols, cfg: TaskConfig) -> list[str]:
    return [labels.items[k] for k in predicted]


def evaluate(instances: Sequence[Instance], predictions: Sequence[str]) -> dict:
    return classification_scores([x.label for x in instances], predictions)


def write(instances: Sequence[Instance], predictions: Sequence[str], f) -> None:
    """One line per example: the predicted label, a tab, the text's tokens."""
    for x, label in zip(instances, predictions):
        f.write(f"{label}\t{' '.join(x.tokens)}\n")
