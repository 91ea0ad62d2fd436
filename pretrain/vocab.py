"""The softmax vocabulary and the table of every word type seen.

``Vocabulary``: the words the LM predicts, saved as text (one word per line), ``<S>``, ``</S>``,
``<UNK>`` first and then the most frequent words (ties alphabetical, so the file is
reproducible). A word outside it is predicted as ``<UNK>`` but still read through its characters.

``WordTable``: every word type of the corpus (in the vocabulary or not) gets a type id; the table
holds its character ids and its softmax target, so a batch of type ids becomes character ids and
targets by indexing. Type 0 is padding (no characters, no target).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Optional, Sequence

import numpy as np

from elmo.chars import BOS_TOKEN, EOS_TOKEN, MAX_CHARACTERS_PER_TOKEN, word_to_char_ids
from elmo.io import atomic_open, drop_byte_order_mark

UNK_TOKEN = "<UNK>"
SPECIALS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2
NO_TARGET = -1


class Vocabulary:
    """The words the LM predicts (its softmax rows), ``<S>``, ``</S>``, ``<UNK>`` first; saved as
    text. Not a task model's word or label index (``tasks.data.Vocabulary``), which has padding
    and unknown entries of its own and no order by frequency."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {words[:3]}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            dup = [w for w, n in Counter(words).items() if n > 1][:5]
            raise ValueError(f"vocabulary has duplicate words, e.g. {dup}")

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def id(self, word: str) -> int:
        return self.index.get(word, UNK_ID)

    @classmethod
    def from_counts(cls, counts: Counter, max_size: Optional[int] = None, min_count: int = 1
                    ) -> "Vocabulary":
        """Most frequent words first (ties alphabetical); ``max_size`` includes the 3 specials."""
        ranked = sorted(((n, w) for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                        key=lambda nw: (-nw[0], nw[1]))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls(list(SPECIALS) + [w for _, w in ranked])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_open(path, "w") as f:
            for w in self.words:
                f.write(w + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        with open(path, encoding="utf-8") as f:
            words = [line.rstrip("\n") for line in f]
        if words:
            words[0] = drop_byte_order_mark(words[0])
        while words and words[-1] == "":
            words.pop()
        if any(w == "" or any(c.isspace() for c in w) for w in words):
            raise ValueError(f"{path}: a vocabulary file holds one word per line, without blank "
                             "lines or spaces")
        if tuple(words[:3]) != SPECIALS:
            # bilm-tf's vocabularies list the specials first too; accept any order of them.
            words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        return cls(words)


class WordTable:
    """Type ids for every word seen; character ids and softmax targets by type id."""

    def __init__(self, vocab: Optional[Vocabulary] = None,
                 max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> None:
        self.max_characters = max_characters
        self.words: list[str] = [""]  # type 0 = padding
        self.index: dict[str, int] = {}
        self.chars = np.zeros((1024, max_characters), dtype=np.int16)
        self.targets = np.full(1024, NO_TARGET, dtype=np.int64)
        self.vocab = vocab
        self.bos, self.eos = self.add(BOS_TOKEN), self.add(EOS_TOKEN)

    @classmethod
    def from_types(cls, words: list[str], chars: Optional[np.ndarray] = None,
                   max_characters: int = MAX_CHARACTERS_PER_TOKEN,
                   vocab: Optional[Vocabulary] = None) -> "WordTable":
        """A table with given type ids: ``words[0] == ""`` (padding), ``words[1:3] == [<S>, </S>]``;
        ``chars`` (len(words), max_characters) their character ids (computed when None)."""
        if words[:3] != ["", BOS_TOKEN, EOS_TOKEN]:
            raise ValueError(f"types must start with padding, {BOS_TOKEN}, {EOS_TOKEN}; got {words[:3]}")
        table = cls.__new__(cls)
        table.max_characters, table.vocab = max_characters, vocab
        table.words = words
        table.index = {w: i for i, w in enumerate(words)}
        del table.index[""]
        if chars is None:
            chars = np.zeros((len(words), max_characters), dtype=np.int16)
            for i in range(1, len(words)):
                chars[i] = word_to_char_ids(words[i], max_characters)
        if chars.shape != (len(words), max_characters):
            raise ValueError(f"chars must be ({len(words)}, {max_characters}), got {chars.shape}")
        table.chars = np.ascontiguousarray(chars, dtype=np.int16)
        table.targets = np.full(len(words), NO_TARGET, dtype=np.int64)
        table.bos, table.eos = 1, 2
        if vocab is not None:
            table.set_vocab(vocab)
        return table

    def __len__(self) -> int:
        return len(self.words)

    def add(self, word: str) -> int:
        tid = self.index.get(word)
        if tid is not None:
            return tid
        tid = len(self.words)
        if tid == len(self.chars):
            self.chars = np.concatenate([self.chars, np.zeros_like(self.chars)])
            self.targets = np.concatenate([self.targets, np.full_like(self.targets, NO_TARGET)])
        self.chars[tid] = word_to_char_ids(word, self.max_characters)
        if self.vocab is not None:
            self.targets[tid] = self.vocab.id(word)
        self.words.append(word)
        self.index[word] = tid
        return tid

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Tokens -> type ids (int32), adding unseen words."""
        index, add = self.index, self.add
        return np.fromiter((index[w] if w in index else add(w) for w in tokens), dtype=np.int32)

    def set_vocab(self, vocab: Vocabulary) -> None:
        """Point every type at its target in ``vocab`` (types added later are looked up on add)."""
        self.vocab = vocab
        n = len(self.words)
        self.targets[1:n] = [vocab.id(w) for w in self.words[1:]]

    def counts(self, type_ids: Iterable[np.ndarray]) -> Counter:
        """Word counts from arrays of type ids."""
        total = np.zeros(len(self.words), dtype=np.int64)
        for ids in type_ids:
            total += np.bincount(ids, minlength=len(self.words))[: len(total)]
        return Counter({self.words[i]: int(total[i]) for i in np.nonzero(total)[0] if i > 0})
