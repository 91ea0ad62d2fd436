"""Batches for the bidirectional LM, in the original's window mode or in sentence mode.

Every sentence is read as ``<S> w_1 ... w_n </S>``. At a position holding token x_t the forward LM
predicts x_{t+1} and the backward LM x_{t-1}; targets never cross a sentence boundary (nothing is
predicted from ``</S>`` forward or from ``<S>`` backward), so each sentence contributes n + 1
targets per direction: w_1..w_n, </S> forward and <S>, w_1..w_n backward.

Window mode (bilm-tf's): each of the B rows is its own stream of sentences laid end to end and
cut into ``window``-token pieces; row i of a batch continues row i of the previous one, whose final
LSTM state the trainer carries over (truncated back-propagation). No padding. The forward target of
a window's last position is the first token of the next window. The backward target of a window's
first position is left out: the carried backward state has already read that token.

Sentence mode: each sentence alone in its row, padded, the state reset every batch. Sentences
longer than ``max_tokens`` are cut into pieces, each with its own <S> and </S>.

Both batchers are deterministic functions of (seed, epoch, position) and expose ``state_dict`` /
``load_state_dict`` so that a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

from elmo.chars import TokenBatch
from pretrain.vocab import NO_TARGET, WordTable


class Batch(NamedTuple):
    tokens: torch.Tensor            # (B, T) long: row into token_chars; -1 = padding
    token_chars: torch.Tensor       # (U, C) long: character ids of the batch's distinct tokens
    forward_targets: torch.Tensor   # (B, T) long: softmax id of x_{t+1}; -1 = no target
    backward_targets: torch.Tensor  # (B, T) long: softmax id of x_{t-1}; -1 = no target

    @property
    def mask(self) -> torch.Tensor:
        return self.tokens >= 0  # (B, T)

    def token_batch(self) -> TokenBatch:
        """The model input: the distinct tokens' characters and each position's row (-1 = padding)."""
        return TokenBatch(self.token_chars, self.tokens)

    def char_ids(self) -> torch.Tensor:
        """(B, T, C) character ids, all zero at padding (the plain input of ``ElmoBiLM``)."""
        return self.token_batch().char_ids()

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in self))

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` (e.g. one process's share of a batch)."""
        return Batch(self.tokens[start:stop], self.token_chars, self.forward_targets[start:stop],
                     self.backward_targets[start:stop])


def make_batch(ext: np.ndarray, table: WordTable) -> Batch:
    """(B, T+1) type ids: the batch's T tokens per row plus the token after them (0 = none)."""
    x = ext[:, :-1]  # (B, T)
    fwd = table.targets[ext[:, 1:]]  # (B, T)
    fwd[(x == table.eos) | (x == 0)] = NO_TARGET
    bwd = np.full_like(fwd, NO_TARGET)
    bwd[:, 1:] = table.targets[x[:, :-1]]
    bwd[(x == table.bos) | (x == 0)] = NO_TARGET
    types, inverse = np.unique(x, return_inverse=True)
    inverse = inverse.reshape(x.shape)
    if types[0] == 0:  # padding: not a token
        types, inverse = types[1:], inverse - 1
    chars = table.chars[types].astype(np.int64)  # (U, C)
    return Batch(torch.from_numpy(inverse.astype(np.int64)), torch.from_numpy(chars),
                 torch.from_numpy(fwd), torch.from_numpy(bwd))


def _with_boundaries(sentence: np.ndarray, table: WordTable) -> np.ndarray:
    out = np.empty(len(sentence) + 2, dtype=np.int32)
    out[0], out[1:-1], out[-1] = table.bos, sentence, table.eos
    return out


class WindowBatcher:
    """B endless streams of sentences cut into ``window``-token pieces (the original's batching).

    ``contiguous``: instead of taking sentences from one shuffle per epoch, row i of process r
    reads slice ``r * B + i`` of ``world * B`` equal slices of the corpus, in corpus order, and
    starts its slice again when it reaches the end (the PTB convention; needs an in-memory corpus).
    """

    def __init__(self, corpus, table: WordTable, batch_size: int, window: int, seed: int,
                 rank: int = 0, world: int = 1, contiguous: bool = False) -> None:
        self.corpus, self.table = corpus, table
        self.batch_size, self.window, self.seed, self.rank, self.world = batch_size, window, seed, rank, world
        self.epoch, self.consumed = 0, 0  # sentences of this epoch already taken
        self.rows = [np.zeros(0, np.int32) for _ in range(batch_size)]
        self._iter = None
        self.contiguous = contiguous
        if contiguous:
            n_rows = batch_size * world
            if len(corpus) < n_rows:
                raise ValueError(f"contiguous window order: the corpus has {len(corpus)} sentences, "
                                 f"fewer than the {n_rows} rows of a batch")
            bounds = np.linspace(0, len(corpus), n_rows + 1).astype(np.int64)
            self.slices = [(int(bounds[j]), int(bounds[j + 1]))
                           for j in range(rank * batch_size, (rank + 1) * batch_size)]
            self.taken = [0] * batch_size  # sentences each row has read (across epochs)

    def _row_sentence(self, i: int) -> np.ndarray:
        start, stop = self.slices[i]
        k = self.taken[i]
        self.taken[i] += 1
        return _with_boundaries(self.corpus[start + k % (stop - start)], self.table)

    def _next_sentence(self) -> np.ndarray:
        while True:
            if self._iter is None:
                self._iter = self.corpus.sentences(self.epoch, self.seed, self.rank, self.world,
                                                   start=self.consumed)
            for sentence in self._iter:
                self.consumed += 1
                return _with_boundaries(sentence, self.table)
            if self.consumed == 0:
                raise ValueError(f"process {self.rank} of {self.world} got no training sentence; "
                                 "the corpus is smaller than the number of processes")
            self.epoch, self.consumed, self._iter = self.epoch + 1, 0, None

    def next_batch(self) -> Batch:
        T = self.window
        ext = np.zeros((self.batch_size, T + 1), dtype=np.int64)
        for i in range(self.batch_size):
            row = self.rows[i]
            if len(row) < T + 1:
                parts = [row]
                while sum(len(p) for p in parts) < T + 1:
                    parts.append(self._row_sentence(i) if self.contiguous else self._next_sentence())
                row = np.concatenate(parts)
            ext[i] = row[: T + 1]
            self.rows[i] = row[T:]  # the peeked token starts the next window
        return make_batch(ext, self.table)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        words = self.table.words
        state = {"epoch": self.epoch, "consumed": self.consumed,
                 "rows": [[words[t] for t in row] for row in self.rows]}
        if self.contiguous:
            state["taken"] = list(self.taken)
        return state

    def load_state_dict(self, state: dict) -> None:
        if len(state["rows"]) != self.batch_size:
            raise ValueError(f"the checkpoint's data position has {len(state['rows'])} rows but "
                             f"data.batch_size is {self.batch_size}; resume with the same batch size")
        self.epoch, self.consumed, self._iter = int(state["epoch"]), int(state["consumed"]), None
        self.rows = [self.table.encode(row) for row in state["rows"]]
        if self.contiguous:
            if "taken" not in state:
                raise ValueError("the checkpoint's data position is of the shuffled window order; "
                                 "resume with data.window_order 'shuffled'")
            self.taken = [int(k) for k in state["taken"]]


def sentence_pieces(sentence: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    return [sentence[i : i + max_tokens] for i in range(0, max(len(sentence), 1), max_tokens)]


def pad_sentences(pieces: list[np.ndarray], table: WordTable) -> Batch:
    """Sentences (type ids, without boundaries) -> one padded sentence-mode batch."""
    T = max(len(p) for p in pieces) + 2
    ext = np.zeros((len(pieces), T + 1), dtype=np.int64)
    for i, p in enumerate(pieces):
        ext[i, : len(p) + 2] = _with_boundaries(p, table)
    return make_batch(ext, table)


class SentenceBatcher:
    """Shuffled sentences, B per batch, grouped by length within pools of 50 batches."""

    POOL_BATCHES = 50

    def __init__(self, corpus, table: WordTable, batch_size: int, max_tokens: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.corpus, self.table = corpus, table
        self.batch_size, self.max_tokens, self.seed, self.rank, self.world = batch_size, max_tokens, seed, rank, world
        self.epoch, self.pool, self.in_pool = 0, 0, 0  # position: pool index, batches taken from it
        self._batches: list = []

    def _load_pool(self) -> None:
        size = self.batch_size * self.POOL_BATCHES
        while True:
            pieces, n_read = [], 0
            for s in self.corpus.sentences(self.epoch, self.seed, self.rank, self.world,
                                           start=self.pool * size):
                pieces.extend(sentence_pieces(s, self.max_tokens))
                n_read += 1
                if n_read == size:  # a pool is ``size`` sentences (its position in the epoch)
                    break
            if pieces:
                break
            if self.pool == 0:
                raise ValueError(f"process {self.rank} of {self.world} got no training sentence")
            self.epoch, self.pool, self.in_pool = self.epoch + 1, 0, 0
        rng = np.random.default_rng([self.seed, self.epoch, self.pool, self.rank])
        order = np.argsort([len(p) for p in pieces], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        self._batches = [[pieces[j] for j in batches[k]] for k in rng.permutation(len(batches))]

    def next_batch(self) -> Batch:
        if not self._batches or self.in_pool >= len(self._batches):
            if self._batches:
                self.pool, self.in_pool = self.pool + 1, 0
            self._load_pool()
        batch = pad_sentences(self._batches[self.in_pool], self.table)
        self.in_pool += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pool": self.pool, "in_pool": self.in_pool}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pool, self.in_pool = int(state["epoch"]), int(state["pool"]), int(state["in_pool"])
        self._batches = []
        if self.in_pool:
            self._load_pool()


def eval_batches(corpus, table: WordTable, batch_size: int, max_tokens: int,
                 token_budget: int | None = None) -> list[Batch]:
    """Held-out sentences in corpus order (up to ``token_budget`` tokens), sorted by length."""
    pieces, n = [], 0
    for i in range(len(corpus)):
        if token_budget is not None and n >= token_budget:
            break
        for p in sentence_pieces(corpus[i], max_tokens):
            pieces.append(p)
            n += len(p)
    pieces.sort(key=len)
    return [pad_sentences(pieces[i : i + batch_size], table) for i in range(0, len(pieces), batch_size)]
