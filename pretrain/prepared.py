"""A prepared corpus: text tokenized once into flat arrays that training reads without parsing.

This module holds the format and its readers; ``pretrain.prepare`` (``elmo-prepare TEXT... --out
CORPUS_DIR``) writes it::

    CORPUS_DIR/manifest.json     format, tokenizer, sources (path, size, mtime), totals; written last
    CORPUS_DIR/tokens.npy        int32 (N,)   type id of every token, sentence after sentence
    CORPUS_DIR/offsets.npy       int64 (S+1,) sentence s is tokens[offsets[s]:offsets[s+1]]
    CORPUS_DIR/line_hash.npy     uint32 (S,)  crc32 of each line (the held-out split, any fraction)
    CORPUS_DIR/words.txt         type 1, 2, ... one word per line (type 0 is padding)
    CORPUS_DIR/counts.npy        int64 (V,)   count of each type in the whole corpus
    CORPUS_DIR/heldout_counts.npy int64 (V,)  its count in the held-out lines at the manifest's fraction
    CORPUS_DIR/chars.npy         int16 (V, 50) character ids of each type (elmo.chars)
    CORPUS_DIR/alpha_rank.npy    int32 (V,)   each type's rank in sorted(words): vocabulary ties

(and, while a preparation runs or after it was killed, ``plan.json`` and ``shards/``). Type ids
are given in order of first appearance, as ``WordTable`` gives them while reading the text, so a
prepared corpus yields the very batches the raw text yields.

``PreparedCorpus`` opens a prepared directory for training. Tokens are read with ``pread`` from
the shared page cache (N processes of one node hold one copy, and none maps the token array into
its own resident memory); a process keeps in memory only the sentence offsets, its epoch order
and the type table. ``split`` gives the training and held-out sentences (``PreparedSentences``,
with ``EncodedCorpus``'s interface). The last part is what ``pretrain.run`` calls:
``prepared_train_dir``, ``adopt_tokenizer``, ``prepare_for_run``, ``open_for_training``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from elmo.chars import MAX_CHARACTERS_PER_TOKEN
from pretrain.corpus import EncodedCorpus
from pretrain.vocab import SPECIALS, Vocabulary, WordTable

logger = logging.getLogger(__name__)

# -- the format -------------------------------------------------------------------------------------
FORMAT = "elmo-prepared-corpus"
VERSION = 1
MANIFEST, PLAN, SHARDS = "manifest.json", "plan.json", "shards"
TOKENS, OFFSETS, HASHES = "tokens.npy", "offsets.npy", "line_hash.npy"
WORDS, COUNTS, HELD_COUNTS = "words.txt", "counts.npy", "heldout_counts.npy"
CHARS, ALPHA = "chars.npy", "alpha_rank.npy"
_FILES = (TOKENS, OFFSETS, HASHES, WORDS, COUNTS, HELD_COUNTS, CHARS, ALPHA)
# The manifest's (and the plan's) keys that say which text was prepared how: equal -> the same corpus.
IDENTITY = ("format", "version", "tokenizer", "heldout_fraction", "sources", "hub")
IMPLICIT_DIR = "corpus"  # raw --train text is prepared into RUN_DIR/corpus


def read_json(path: str) -> Optional[dict]:
    """A manifest or plan, or None when it is missing or unreadable (an unfinished write)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_prepared(path: str) -> bool:
    """Whether ``path`` is a (complete or interrupted) prepared corpus directory."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, MANIFEST))
                                    or os.path.isfile(os.path.join(path, PLAN)))


# -- reading ---------------------------------------------------------------------------------------
class StalePreparationError(ValueError):
    """A source file changed after the corpus was prepared from it."""


def _npy_data(path: str) -> tuple[int, np.dtype, tuple]:
    """Byte offset of a .npy file's data, its dtype and shape (for pread)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: not a C-ordered array")
        return f.tell(), dtype, shape


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


class PreparedCorpus:
    """A prepared corpus directory opened read-only; ``sentence(s)`` reads sentence s."""

    def __init__(self, path: str, check_sources: bool = True) -> None:
        self.path = path
        manifest = read_json(os.path.join(path, MANIFEST))
        if manifest is None:
            if os.path.isfile(os.path.join(path, PLAN)):
                raise ValueError(f"{path}: the preparation did not finish (it was interrupted); run "
                                 "the same elmo-prepare command again to complete it")
            raise ValueError(f"{path}: not a prepared corpus (no {MANIFEST}); prepare one with "
                             f"elmo-prepare TEXT... --out {path}")
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"{path}: {MANIFEST} is not a version-{VERSION} {FORMAT} manifest; "
                             "prepare the corpus again with this version's elmo-prepare")
        self.manifest = manifest
        self.tokenizer: str = manifest["tokenizer"]
        self.num_tokens: int = manifest["num_tokens"]
        self.num_sentences: int = manifest["num_sentences"]
        if check_sources:
            self.check_sources()
        self.offsets = np.load(os.path.join(path, OFFSETS))  # (S+1,) int64, in memory
        base, dtype, shape = _npy_data(os.path.join(path, TOKENS))
        if dtype != np.int32 or shape != (self.num_tokens,) or len(self.offsets) != self.num_sentences + 1 \
                or int(self.offsets[-1]) != self.num_tokens:
            raise ValueError(f"{path}: {TOKENS} / {OFFSETS} do not match {MANIFEST} (a damaged "
                             "preparation); prepare the corpus again")
        self._base = base
        self._fd = os.open(os.path.join(path, TOKENS), os.O_RDONLY)

    def close(self) -> None:
        """Close the token file (also done when the object is collected)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def check_sources(self) -> None:
        """Raise ``StalePreparationError`` naming a source that changed; warn about missing ones."""
        for src in self.manifest["sources"]:
            try:
                st = os.stat(src["path"])
            except FileNotFoundError:
                logger.warning("%s: its source %s no longer exists; training on the prepared copy",
                               self.path, src["path"])
                continue
            if st.st_size != src["size"] or st.st_mtime_ns != src["mtime_ns"]:
                raise StalePreparationError(
                    f"{self.path} is stale: {src['path']} changed after it was prepared (then "
                    f"{src['size']:,} bytes, modified {_when(src['mtime_ns'])}; now {st.st_size:,} "
                    f"bytes, modified {_when(st.st_mtime_ns)}); prepare it again (elmo-prepare ... "
                    f"--out {self.path}) or restore the file")

    def sentence(self, s: int) -> np.ndarray:
        """Type ids of sentence ``s`` (int32, read-only), read from the page cache."""
        a, b = self.offsets[s], self.offsets[s + 1]
        return np.frombuffer(os.pread(self._fd, 4 * int(b - a), self._base + 4 * int(a)), np.int32)

    def _load(self, name: str) -> np.ndarray:
        """One of the corpus's small arrays (COUNTS, HELD_COUNTS, CHARS, ALPHA, HASHES), in memory."""
        return np.load(os.path.join(self.path, name))

    def words(self) -> list[str]:
        """The type table: ``words()[t]`` is type t ("" for the padding type 0)."""
        with open(os.path.join(self.path, WORDS), encoding="utf-8", errors="surrogatepass",
                  newline="\n") as f:
            words = [""] + f.read().split("\n")[:-1]
        if len(words) != self.manifest["num_types"]:
            raise ValueError(f"{self.path}: {WORDS} holds {len(words) - 1} words, the manifest "
                             f"{self.manifest['num_types'] - 1}; prepare the corpus again")
        return words

    def word_table(self, max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> WordTable:
        """Every type of the corpus with its character ids, under the prepared type ids."""
        words = self.words()
        chars = self._load(CHARS) if max_characters == self.manifest["max_characters"] else None
        return WordTable.from_types(words, chars, max_characters)

    def split(self, fraction: float) -> tuple["PreparedSentences", "PreparedSentences", np.ndarray]:
        """Training and held-out sentences for a held-out ``fraction`` of the lines (by the hash
        of each line, as ``corpus.is_heldout``), and the per-type counts of the training side."""
        counts = self._load(COUNTS)
        S = self.num_sentences
        small = np.int32 if S < 2**31 else np.int64
        if fraction <= 0.0:
            return PreparedSentences(self, None, self.num_tokens), \
                PreparedSentences(self, np.zeros(0, small), 0), counts
        held = self._load(HASHES) < fraction * 4294967296.0  # (S,)
        held_idx = np.flatnonzero(held).astype(small)
        train_idx = np.flatnonzero(~held).astype(small)
        del held
        held_tokens = int((self.offsets[held_idx.astype(np.int64) + 1] - self.offsets[held_idx]).sum())
        if fraction == self.manifest["heldout_fraction"]:
            held_counts = self._load(HELD_COUNTS)
        else:  # not the prepared fraction: count the held-out sentences' tokens once
            held_counts = np.zeros(len(counts), np.int64)
            for k in range(0, len(held_idx), 65536):
                ids = [self.sentence(int(s)) for s in held_idx[k : k + 65536]]
                held_counts += np.bincount(np.concatenate(ids), minlength=len(counts))
        return PreparedSentences(self, train_idx, self.num_tokens - held_tokens), \
            PreparedSentences(self, held_idx, held_tokens), counts - held_counts


class PreparedSentences:
    """Some sentences of a ``PreparedCorpus`` (all when ``index`` is None), read on demand;
    ``EncodedCorpus``'s interface and the very same epoch order."""

    def __init__(self, corpus: PreparedCorpus, index: Optional[np.ndarray], num_tokens: int) -> None:
        self.corpus, self.index, self.num_tokens = corpus, index, num_tokens

    def __len__(self) -> int:
        return self.corpus.num_sentences if self.index is None else len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.corpus.sentence(i if self.index is None else int(self.index[i]))

    # The same seeded shuffle and rank shares as the in-memory corpus: the same batches.
    order = EncodedCorpus.order

    def sentences(self, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  start: int = 0, block: int = 4096) -> Iterator[np.ndarray]:
        """``EncodedCorpus.sentences``: this rank's sentences of an epoch from position ``start``;
        offsets looked up ``block`` sentences at a time, one ``pread`` per sentence."""
        order = self.order(epoch, seed, rank, world)[start:]
        offsets, fd, base, pread = self.corpus.offsets, self.corpus._fd, self.corpus._base, os.pread
        for k in range(0, len(order), block):
            g = order[k : k + block]
            if self.index is not None:
                g = self.index[g].astype(np.int64)
            begin = offsets[g]
            for a, n in zip((base + 4 * begin).tolist(), (4 * (offsets[g + 1] - begin)).tolist()):
                yield np.frombuffer(pread(fd, n, a), np.int32)


def vocabulary_from_counts(table: WordTable, counts: np.ndarray, alpha_rank: np.ndarray,
                           max_size: Optional[int] = None, min_count: int = 1) -> Vocabulary:
    """``Vocabulary.from_counts`` on per-type counts (``counts[t]`` of type t of ``table``): most
    frequent first, ties alphabetical (``alpha_rank``), sorted by numpy rather than in Python."""
    keep = counts >= min_count  # (V,)
    keep[0] = False
    for w in SPECIALS:
        t = table.index.get(w)
        if t is not None and t < len(keep):
            keep[t] = False
    cand = np.flatnonzero(keep)
    ranked = cand[np.lexsort((alpha_rank[cand], -counts[cand]))]
    if max_size is not None:
        ranked = ranked[: max(0, max_size - len(SPECIALS))]
    words = table.words
    return Vocabulary(list(SPECIALS) + [words[int(t)] for t in ranked])


# -- elmo-pretrain's use (pretrain.run) -------------------------------------------------------------
def prepared_train_dir(train: Sequence[str]) -> Optional[str]:
    """The prepared corpus directory that ``--train`` names, or None when it names raw text."""
    found = [t for t in train if is_prepared(t)]
    if not found:
        return None
    if len(train) != 1:
        raise ValueError(f"--train {' '.join(train)}: a prepared corpus directory ({found[0]}) is "
                         "given alone; prepare all the text into one (elmo-prepare A B ... --out DIR)")
    return found[0]


def adopt_tokenizer(data, corpus_dir: str) -> None:
    """``data.tokenizer`` (a ``DataConfig``) becomes the prepared corpus's, with a warning if it
    differed (before the run's config is saved, so a resume finds the same one)."""
    manifest = read_json(os.path.join(corpus_dir, MANIFEST)) or {}
    tokenizer = manifest.get("tokenizer")
    if tokenizer and data.tokenizer != tokenizer:
        logger.warning("%s was prepared with the %s tokenizer; data.tokenizer %r is replaced by it",
                       corpus_dir, tokenizer, data.tokenizer)
        data.tokenizer = tokenizer


def prepare_for_run(train: Sequence[str], out_dir: str, tokenizer: str, heldout_fraction: float,
                    text_field: str, resuming: bool, progress: bool) -> str:
    """Raw ``--train`` text prepared into ``OUT/corpus`` (once; reused by a resumed run)."""
    target = os.path.join(out_dir, IMPLICIT_DIR)
    if resuming and os.path.isfile(os.path.join(target, MANIFEST)):
        corpus = PreparedCorpus(target)  # a changed source is an error: the checkpoint's data position is the old text's
        corpus.close()
        manifest = corpus.manifest
        if manifest["tokenizer"] == tokenizer and manifest["heldout_fraction"] == heldout_fraction:
            return target
    from pretrain.prepare import prepare  # the writer imports this module's format

    prepare(train, target, tokenizer, 1, heldout_fraction, text_field, progress=progress)
    return target


def open_for_training(corpus_dir: str, heldout: Optional[Sequence[str]], data, max_characters: int,
                      vocab: Optional[Vocabulary]):
    """(train sentences, held-out sentences, table, vocabulary, target counts (float64, per
    softmax id, with <S>/</S> once per training sentence)) of a prepared corpus, as ``run`` uses
    them. ``data`` is the run's ``DataConfig``; its tokenizer becomes the corpus's."""
    from pretrain.corpus import load_corpus
    from pretrain.vocab import BOS_ID, EOS_ID

    corpus = PreparedCorpus(corpus_dir)
    adopt_tokenizer(data, corpus_dir)
    fraction = 0.0 if heldout else data.heldout_fraction
    train, held, counts = corpus.split(fraction)
    if len(train) == 0:
        raise ValueError(f"{corpus_dir}: no training text outside the held-out fraction {fraction}")
    table = corpus.word_table(max_characters)
    if heldout:
        held = load_corpus(heldout, None, table, data.tokenizer, 0.0, data.text_field)[0]
    if vocab is None:
        vocab = vocabulary_from_counts(table, counts, corpus._load(ALPHA), data.max_vocab_size,
                                       data.min_count)
    table.set_vocab(vocab)
    V = len(counts)
    target_counts = np.bincount(table.targets[1:V], weights=counts[1:].astype(np.float64),
                                minlength=len(vocab))
    target_counts[BOS_ID] += len(train)
    target_counts[EOS_ID] += len(train)
    return train, held, table, vocab, target_counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``elmo-prepare`` (``pretrain.prepare.main``) under the name that pyproject.toml's entry point
    and ``python -m pretrain.prepared`` use."""
    from pretrain.prepare import main as prepare_main

    return prepare_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
