"""What a task is: the ``Task`` protocol that the modules ``tasks.ner``, ``tasks.srl`` and
``tasks.classify`` follow, so that training, evaluation and prediction (``tasks.train``,
``tasks.cli``) treat every task alike.

A task is a module, not a class: its functions turn data into instances and predictions into
strings and scores, and its ``build`` makes the head (an ``nn.Module`` with ``loss(batch)`` and
``predict(batch)``). The flow through one training run::

    read(path, cfg) -> instances            (gold tags or labels in the data's own scheme)
    setup(train, cfg) -> labels             (the label vocabulary; may set cfg.data.scheme)
    targets(train, cfg) -> instances        (targets in the model's scheme, e.g. BIOUL)
    build(cfg, num_words, labels, bilm) -> head
    decode(head outputs, labels, cfg) -> predictions as strings (the data's scheme)
    evaluate(instances, predictions) -> {METRIC: ..., ...}
    write(instances, predictions, file)     (the ``elmo-task predict`` output format)
"""

from __future__ import annotations

from typing import IO, Any, Optional, Protocol, Sequence, runtime_checkable

from torch import nn

from elmo import ElmoBiLM
from tasks.config import TaskConfig
from tasks.data import Symbols
from tasks.readers import Instance


@runtime_checkable
class Task(Protocol):
    METRIC: str  # the dev metric that early stopping and model selection follow

    def read(self, path: str, cfg: TaskConfig, with_targets: bool = True) -> list[Instance]: ...

    def setup(self, train: Sequence[Instance], cfg: TaskConfig) -> Symbols: ...

    def targets(self, instances: Sequence[Instance], cfg: TaskConfig) -> list[Instance]: ...

    def build(self, cfg: TaskConfig, num_words: int, labels: Symbols,
              bilm: Optional[ElmoBiLM]) -> nn.Module: ...

    def decode(self, predicted: Sequence[Any], labels: Symbols, cfg: TaskConfig) -> list: ...

    def evaluate(self, instances: Sequence[Instance], predictions: Sequence[Any]) -> dict: ...

    def write(self, instances: Sequence[Instance], predictions: Sequence[Any], f: IO[str]) -> None: ...
