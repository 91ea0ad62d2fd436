"""Vocabularies and batches: instances -> padded tensors (and cached ELMo layers) for a head.

Batches group examples of similar length (sorted, then cut into batches whose order is shuffled
each epoch), so padding stays small both for the LSTMs and for the cached layers.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence

import torch

from elmo import ElmoOutput, TokenBatch, batch_to_tokens
from elmo.chars import MAX_CHARACTERS_PER_TOKEN
from tasks.readers import Instance

PAD, UNK = "@@PAD@@", "@@UNK@@"


class Symbols:
    """Index <-> string for a task model's words (with padding and unknown entries) or labels
    (without), saved in the model folder's ``vocab.json``.

    Not the pretraining vocabulary (``pretrain.vocab.Vocabulary``): that one is the LM's softmax
    over words, ``<S>``, ``</S>``, ``<UNK>`` first and then by frequency, saved as ``vocab.txt``."""

    def __init__(self, items: Sequence[str], specials: bool) -> None:
        self.items = ([PAD, UNK] if specials else []) + [x for x in items if x not in (PAD, UNK)]
        self.index = {x: i for i, x in enumerate(self.items)}
        self.specials = specials
        if len(self.index) != len(self.items):
            raise ValueError("vocabulary items must be unique")

    @classmethod
    def words(cls, sentences: Sequence[Sequence[str]], min_count: int = 1, lowercase: bool = False
              ) -> "Symbols":
        counts = Counter(w.lower() if lowercase else w for s in sentences for w in s)
        return cls(sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)),
                   specials=True)

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, tokens: Sequence[str], lowercase: bool = False) -> list[int]:
        unk = self.index.get(UNK)
        out = []
        for t in tokens:
            i = self.index.get(t.lower() if lowercase else t, unk)
            if i is None:
                raise KeyError(f"{t!r} is not in the label vocabulary {self.items[:20]}")
            out.append(i)
        return out


@dataclass
class TaskBatch:
    """One batch of a task model's inputs and targets (pretraining's is ``pretrain.batches.Batch``)."""

    mask: torch.Tensor  # (B, T) bool
    tokens: Optional[TokenBatch] = None  # characters of the distinct tokens, for the biLM or the char CNN
    word_ids: Optional[torch.Tensor] = None  # (B, T)
    elmo: Optional[ElmoOutput] = None  # cached ELMo layers (L+1, B, T, 2P) and mask
    predicate: Optional[torch.Tensor] = None  # (B, T) long: 1 at the SRL predicate
    tags: Optional[torch.Tensor] = None  # (B, T) target tag ids
    labels: Optional[torch.Tensor] = None  # (B,) target label ids
    index: Optional[list] = None  # positions of the examples in the instance list

    def to(self, device: torch.device) -> "TaskBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, (torch.Tensor, TokenBatch)):
                moved[name] = value.to(device)
            elif isinstance(value, ElmoOutput):
                moved[name] = value._replace(layers=value.layers.to(device), mask=value.mask.to(device))
        return TaskBatch(**moved)


class BatchMaker:
    """Builds the ``TaskBatch``es of one task model: which inputs it needs and where the layers
    come from.

    ``max_characters``: the width of the character ids, the model's ``max_characters_per_token``
    (``TokenEncoder.char_width``; 50 in every released ELMo)."""

    def __init__(self, words: Optional[Symbols], labels: Symbols, lowercase: bool = False,
                 need_chars: bool = False, cache=None,
                 max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> None:
        self.words, self.labels, self.lowercase = words, labels, lowercase
        self.need_chars, self.cache, self.max_characters = need_chars, cache, max_characters

    def make(self, instances: Sequence[Instance], index: list, with_targets: bool = True) -> TaskBatch:
        tokens = [instances[i].tokens for i in index]
        B, T = len(tokens), max(len(t) for t in tokens)
        lengths = torch.tensor([len(t) for t in tokens])
        batch = TaskBatch(mask=torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1), index=list(index))
        if self.need_chars:
            batch.tokens = batch_to_tokens(tokens, self.max_characters)
        if self.words is not None:
            batch.word_ids = torch.zeros(B, T, dtype=torch.long)
            for b, t in enumerate(tokens):
                batch.word_ids[b, : len(t)] = torch.tensor(self.words.encode(t, self.lowercase))
        if self.cache is not None:
            batch.elmo = self.cache.output(tokens, T)
        first = instances[index[0]]
        if first.predicate is not None:
            batch.predicate = torch.zeros(B, T, dtype=torch.long)
            for b, i in enumerate(index):
                batch.predicate[b, instances[i].predicate] = 1
        if with_targets and first.tags is not None:
            batch.tags = torch.zeros(B, T, dtype=torch.long)
            for b, i in enumerate(index):
                batch.tags[b, : len(tokens[b])] = torch.tensor(self.labels.encode(instances[i].tags))
        if with_targets and first.label is not None:
            batch.labels = torch.tensor(self.labels.encode([instances[i].label for i in index]))
        return batch

    def batches(self, instances: Sequence[Instance], batch_size: int, shuffle: bool = False,
                rng: Optional[random.Random] = None, with_targets: bool = True) -> Iterator[TaskBatch]:
        """Length-sorted batches; with ``shuffle`` the ties and the batch order are random."""
        rng = rng or random.Random(0)
        keys = [(len(x.tokens), rng.random() if shuffle else 0.0, i) for i, x in enumerate(instances)]
        order = [i for _, _, i in sorted(keys)]
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if shuffle:
            rng.shuffle(chunks)
        for chunk in chunks:
            yield self.make(instances, chunk, with_targets)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
