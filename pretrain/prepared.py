"""A prepared corpus: text tokenized once into flat arrays that training reads without parsing.

``elmo-prepare TEXT... --out CORPUS_DIR`` (``prepare``) reads files, folders, globs or a hub
dataset exactly as ``elmo-pretrain --train`` reads them (the same lines, the same tokens, the
same held-out hash) and writes::

    CORPUS_DIR/manifest.json     format, tokenizer, sources (path, size, mtime), totals; written last
    CORPUS_DIR/tokens.npy        int32 (N,)   type id of every token, sentence after sentence
    CORPUS_DIR/offsets.npy       int64 (S+1,) sentence s is tokens[offsets[s]:offsets[s+1]]
    CORPUS_DIR/line_hash.npy     uint32 (S,)  crc32 of each line (the held-out split, any fraction)
    CORPUS_DIR/words.txt         type 1, 2, ... one word per line (type 0 is padding)
    CORPUS_DIR/counts.npy        int64 (V,)   count of each type in the whole corpus
    CORPUS_DIR/heldout_counts.npy int64 (V,)  its count in the held-out lines at the manifest's fraction
    CORPUS_DIR/chars.npy         int16 (V, 50) character ids of each type (elmo.chars)
    CORPUS_DIR/alpha_rank.npy    int32 (V,)   each type's rank in sorted(words): vocabulary ties

Type ids are given in order of first appearance, as ``WordTable`` gives them while reading the
text, so a prepared corpus yields the very batches the raw text yields. The text is cut into
shards of whole lines (``shard_bytes``); ``workers`` processes tokenize shards in parallel, each
shard is written atomically to ``CORPUS_DIR/shards/`` with its own type table and counts, and the
shards are merged in order (memory: one shard's tokens as Python strings per worker, the merged
type table, never the corpus). A killed preparation resumes from its finished shards and gives a
byte-identical result; the shards are deleted once the manifest is written.

``PreparedCorpus`` opens a prepared directory for training. Tokens are read with ``pread`` from
the shared page cache (N processes of one node hold one copy, and none maps the token array into
its own resident memory); a process keeps in memory only the sentence offsets, its epoch order
and the type table. ``split`` gives the training and held-out sentences (``PreparedSentences``,
with ``EncodedCorpus``'s interface).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from elmo.chars import BOS_TOKEN, EOS_TOKEN, MAX_CHARACTERS_PER_TOKEN, word_to_char_ids
from elmo.io import atomic_path, clean_orphans, write_json_atomic
from pretrain.corpus import (EncodedCorpus, _looks_local, check_text_file, get_tokenizer, iter_lines,
                             open_text, resolve_files, text_chunks)
from pretrain.vocab import SPECIALS, Vocabulary, WordTable

logger = logging.getLogger(__name__)

FORMAT = "elmo-prepared-corpus"
VERSION = 1
MANIFEST, PLAN, SHARDS = "manifest.json", "plan.json", "shards"
TOKENS, OFFSETS, HASHES = "tokens.npy", "offsets.npy", "line_hash.npy"
WORDS, COUNTS, HELD_COUNTS = "words.txt", "counts.npy", "heldout_counts.npy"
CHARS, ALPHA = "chars.npy", "alpha_rank.npy"
_FILES = (TOKENS, OFFSETS, HASHES, WORDS, COUNTS, HELD_COUNTS, CHARS, ALPHA)
SHARD_BYTES = 64 << 20
_PANDAS_BYTES = 48 << 20


# -- where the text comes from ----------------------------------------------------------------
def is_prepared(path: str) -> bool:
    """Whether ``path`` is a (complete or interrupted) prepared corpus directory."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, MANIFEST))
                                    or os.path.isfile(os.path.join(path, PLAN)))


def _source_entry(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _plan_shards(files: Sequence[str], shard_bytes: int) -> list[list[int]]:
    """[file index, start, stop] byte ranges of whole lines, about ``shard_bytes`` each."""
    shards = []
    for k, path in enumerate(files):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = 0
            while start < size:
                stop = min(size, start + shard_bytes)
                f.seek(stop - 1)
                while stop < size:  # move the cut to just after the next newline
                    block = f.read(1 << 16)
                    if not block:
                        stop = size
                        break
                    nl = block.find(b"\n")
                    if nl >= 0:
                        stop = f.tell() - len(block) + nl + 1
                        break
                else:
                    stop = size
                shards.append([k, start, stop])
                start = stop
    return shards


def _make_plan(specs: Sequence[str], tokenizer: str, heldout_fraction: float, text_field: str,
               shard_bytes: int) -> dict:
    get_tokenizer(tokenizer)  # an unknown name fails here, before any work
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    plan = {"format": FORMAT, "version": VERSION, "tokenizer": tokenizer,
            "heldout_fraction": heldout_fraction}
    local = [s for s in specs if _looks_local(s)]
    if local and len(local) == len(specs):
        files = [f for f in resolve_files(specs) if check_text_file(f)]
        if not files:
            raise ValueError(f"{', '.join(specs)}: every file is empty; there is no text to prepare")
        plan["sources"] = [_source_entry(f) for f in files]
        plan["hub"] = None
        plan["shard_bytes"] = shard_bytes
        plan["shards"] = _plan_shards(files, shard_bytes)
    else:
        open_text(specs, True, text_field)  # the same checks and errors as --train
        plan["sources"] = []
        plan["hub"] = {"name": specs[0], "text_field": text_field}
        plan["shard_bytes"] = None
        plan["shards"] = [[-1, 0, 0]]
    return plan


# -- one shard: lines -> local type ids, counts ------------------------------------------------
class _ShardEncoder:
    """Tokenizes lines into type ids of a table local to the shard (first appearance order)."""

    def __init__(self, tokenizer: str, heldout_fraction: float, use_pandas: bool = False) -> None:
        self.tokenize = get_tokenizer(tokenizer)
        self.use_pandas = use_pandas
        self.threshold = heldout_fraction * 4294967296.0
        self.index: dict[str, int] = {}
        self.words: list[str] = []
        self.ids: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.hashes: list[np.ndarray] = []
        self.num_tokens = 0

    def add_text(self, text: str) -> int:
        """Lines of ``text`` (a chunk of ``text_chunks``: lines end at ``\\n``). (Tokenizing all
        lines of a chunk in one ``str.split`` and counting each line's tokens from the bytes
        measured no faster than this loop: hashing the tokens is what costs.)"""
        return self.add_lines(text.split("\n"))

    def add_lines(self, lines: Iterable[str]) -> int:
        tokenize, crc = self.tokenize, zlib.crc32
        tokens: list[str] = []
        lengths, hashes = [], []
        for line in lines:
            if not line or line.isspace():
                continue
            toks = tokenize(line)
            if not toks:
                continue
            tokens += toks
            lengths.append(len(toks))
            hashes.append(crc(line.encode("utf-8", "replace")))
        return self._add(tokens, lengths, hashes)

    def _add(self, tokens: list, lengths, hashes: list) -> int:
        if not len(lengths):
            return 0
        index, words = self.index, self.words
        codes, uniques = None, None
        if self.use_pandas:  # pandas (a dependency of datasets) hashes each token once, in C
            try:
                import pandas

                codes, uniques = pandas.factorize(np.array(tokens, dtype=object))
            except ImportError:
                pass
        if uniques is None:
            uniques = dict.fromkeys(tokens)
        mapping = np.empty(len(uniques), np.int32)
        for j, w in enumerate(uniques):  # the chunk's types in order of first appearance
            t = index.get(w)
            if t is None:
                t = index[w] = len(words)
                words.append(w)
            mapping[j] = t
        self.ids.append(mapping[codes] if codes is not None else
                        np.fromiter(map(index.__getitem__, tokens), np.int32, len(tokens)))
        self.lengths.append(np.array(lengths, dtype=np.int32))
        self.hashes.append(np.array(hashes, dtype=np.uint32))
        self.num_tokens += len(tokens)
        return len(tokens)

    def save(self, path: str) -> dict:
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int32)
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint32)
        counts = np.bincount(ids, minlength=len(self.words)).astype(np.int64)
        held = np.repeat(hashes < self.threshold, lengths)
        held_counts = np.bincount(ids[held], minlength=len(self.words)).astype(np.int64)
        blob = "\n".join(self.words).encode("utf-8", "surrogatepass")
        with atomic_path(path, ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids, lengths=lengths, hashes=hashes, counts=counts,
                         held_counts=held_counts, words=np.frombuffer(blob, np.uint8))
        return {"tokens": len(ids), "sentences": len(lengths)}


def _prepare_shard(task: tuple) -> dict:
    """Worker: tokenize one shard of one file and write ``out_path``."""
    path, start, stop, tokenizer, fraction, out_path, use_pandas = task
    enc = _ShardEncoder(tokenizer, fraction, use_pandas)
    for text in text_chunks(path, start, stop):  # as the raw path reads them
        enc.add_text(text)
    summary = enc.save(out_path)
    summary["bytes"] = stop - start
    return summary


def _import_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _prepare_hub(spec: str, text_field: str, tokenizer: str, fraction: float, out_path: str) -> dict:
    enc = _ShardEncoder(tokenizer, fraction)
    batch = []
    for line in iter_lines(open_text([spec], True, text_field)):
        batch.append(line)
        if len(batch) == 10000:
            enc.add_lines(batch)
            batch = []
    enc.add_lines(batch)
    summary = enc.save(out_path)
    summary["bytes"] = 0
    return summary


def char_ids_of(words: Sequence[str], max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> np.ndarray:
    """(len(words), max_characters) int16: ``elmo.chars.word_to_char_ids`` of each word, all at once
    (row 0, the padding type, all zero)."""
    from elmo.chars import BEGIN_WORD_CHAR, END_WORD_CHAR, PADDING_CHAR

    n = len(words)
    chars = np.full((n, max_characters), PADDING_CHAR + 1, np.int16)
    chars[0] = 0
    encoded = [w.encode("utf-8", "replace")[: max_characters - 2] for w in words[1:]]
    lengths = np.fromiter(map(len, encoded), np.int64, n - 1)
    flat = np.frombuffer(b"".join(encoded), np.uint8)
    rows = np.repeat(np.arange(1, n), lengths)
    cols = 1 + np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    chars[rows, cols] = flat.astype(np.int16) + 1
    chars[1:, 0] = BEGIN_WORD_CHAR + 1
    chars[np.arange(1, n), 1 + lengths] = END_WORD_CHAR + 1
    for i, w in enumerate(words[:3]):  # <S>, </S>: special characters, not their letters
        if w in (BOS_TOKEN, EOS_TOKEN):
            chars[i] = word_to_char_ids(w, max_characters)
    return chars


# -- merge -------------------------------------------------------------------------------------
def _shard_path(out_dir: str, k: int) -> str:
    return os.path.join(out_dir, SHARDS, f"shard-{k:06d}.npz")


def _merge(out_dir: str, plan: dict, max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> dict:
    """Shards in order -> the final arrays; returns the manifest (written by the caller)."""
    paths = [_shard_path(out_dir, k) for k in range(len(plan["shards"]))]
    n_tokens = n_sentences = 0
    for p in paths:
        with np.load(p) as z:
            n_tokens += len(z["ids"])
            n_sentences += len(z["lengths"])
    if n_sentences == 0:
        where = plan["hub"]["name"] if plan["hub"] else ", ".join(s["path"] for s in plan["sources"])
        raise ValueError(f"{where}: no training text (every line is blank)")
    index = {BOS_TOKEN: 1, EOS_TOKEN: 2}
    words = ["", BOS_TOKEN, EOS_TOKEN]
    counts = np.zeros(1 << 16, np.int64)
    held_counts = np.zeros(1 << 16, np.int64)
    with atomic_path(os.path.join(out_dir, TOKENS)) as tok_tmp, \
            atomic_path(os.path.join(out_dir, OFFSETS)) as off_tmp, \
            atomic_path(os.path.join(out_dir, HASHES)) as hash_tmp:
        tokens = np.lib.format.open_memmap(tok_tmp, "w+", np.int32, (n_tokens,))
        offsets = np.lib.format.open_memmap(off_tmp, "w+", np.int64, (n_sentences + 1,))
        hashes = np.lib.format.open_memmap(hash_tmp, "w+", np.uint32, (n_sentences,))
        offsets[0] = 0
        t = s = 0
        for p in paths:
            with np.load(p) as z:
                ids, lengths, h = z["ids"], z["lengths"], z["hashes"]
                blob = z["words"].tobytes().decode("utf-8", "surrogatepass")
                local_words = blob.split("\n") if blob else []
                mapping = np.empty(len(local_words), np.int64)
                for j, w in enumerate(local_words):
                    g = index.get(w)
                    if g is None:
                        g = index[w] = len(words)
                        words.append(w)
                    mapping[j] = g
                if len(words) > len(counts):
                    grow = max(len(words), 2 * len(counts)) - len(counts)
                    counts = np.concatenate([counts, np.zeros(grow, np.int64)])
                    held_counts = np.concatenate([held_counts, np.zeros(grow, np.int64)])
                counts[mapping] += z["counts"]  # a shard's types are distinct: no repeated index
                held_counts[mapping] += z["held_counts"]
                tokens[t : t + len(ids)] = mapping[ids]
                offsets[s + 1 : s + 1 + len(lengths)] = t + np.cumsum(lengths, dtype=np.int64)
                hashes[s : s + len(h)] = h
                t, s = t + len(ids), s + len(lengths)
        for a in (tokens, offsets, hashes):
            a.flush()
        del tokens, offsets, hashes
    V = len(words)
    counts, held_counts = counts[:V], held_counts[:V]
    chars = char_ids_of(words, max_characters)
    alpha = np.empty(V, np.int32)
    alpha[sorted(range(V), key=words.__getitem__)] = np.arange(V, dtype=np.int32)
    for name, array in ((COUNTS, counts), (HELD_COUNTS, held_counts), (CHARS, chars), (ALPHA, alpha)):
        with atomic_path(os.path.join(out_dir, name)) as tmp:
            with open(tmp, "wb") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    with atomic_path(os.path.join(out_dir, WORDS)) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="surrogatepass", newline="\n") as f:
            for w in words[1:]:
                f.write(w)
                f.write("\n")
    manifest = {k: plan[k] for k in ("format", "version", "tokenizer", "heldout_fraction",
                                      "sources", "hub")}
    manifest.update({"num_tokens": n_tokens, "num_sentences": n_sentences, "num_types": V,
                     "heldout_tokens": int(held_counts.sum()), "max_characters": max_characters,
                     "files": list(_FILES)})
    return manifest


# -- prepare -----------------------------------------------------------------------------------
def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_ours(name: str) -> bool:
    return name in _FILES or name in (MANIFEST, PLAN, SHARDS) or ".tmp." in name


def prepare(specs: Sequence[str], out_dir: str, tokenizer: str = "whitespace", workers: int = 1,
            heldout_fraction: float = 0.02, text_field: str = "text", shard_bytes: int = SHARD_BYTES,
            progress: bool = False) -> dict:
    """Prepare ``specs`` into ``out_dir`` (resuming an interrupted preparation); the manifest.

    ``heldout_fraction`` only decides which held-out counts are stored beside the full counts
    (training with this fraction needs no pass over the tokens); any fraction works later."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    plan = _make_plan(specs, tokenizer, heldout_fraction, text_field, shard_bytes)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: exists and is not a folder; choose another --out")
    os.makedirs(out_dir, exist_ok=True)
    foreign = [n for n in os.listdir(out_dir) if not _is_ours(n)]
    if foreign:
        raise ValueError(f"{out_dir}: not empty and not a prepared corpus (it holds {foreign[:3]}); "
                         "choose another --out")
    clean_orphans(out_dir)
    manifest_path, plan_path = os.path.join(out_dir, MANIFEST), os.path.join(out_dir, PLAN)
    manifest = _read_json(manifest_path)
    same = {k: plan[k] for k in ("format", "version", "tokenizer", "heldout_fraction", "sources", "hub")}
    if manifest is not None and {k: manifest.get(k) for k in same} == same:
        # (a hub dataset cannot be checked for changes: the same name counts as the same text)
        logger.info("%s: already prepared from these sources; nothing to do", out_dir)
        shutil.rmtree(os.path.join(out_dir, SHARDS), ignore_errors=True)
        return manifest
    if manifest is not None:  # another preparation: it is replaced
        logger.info("%s: the sources or settings changed; preparing again", out_dir)
        os.remove(manifest_path)
    old_plan = _read_json(plan_path)
    shard_dir = os.path.join(out_dir, SHARDS)
    if old_plan != plan:
        shutil.rmtree(shard_dir, ignore_errors=True)
        write_json_atomic(plan_path, plan)
    os.makedirs(shard_dir, exist_ok=True)
    clean_orphans(shard_dir)

    todo = [k for k in range(len(plan["shards"])) if not os.path.isfile(_shard_path(out_dir, k))]
    if len(todo) < len(plan["shards"]):
        logger.info("%s: resuming; %d of %d shards already prepared", out_dir,
                    len(plan["shards"]) - len(todo), len(plan["shards"]))
    files = [s["path"] for s in plan["sources"]]
    total_bytes = sum(b - a for _, a, b in (plan["shards"][k] for k in todo))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="prepare", smoothing=0.1)
    t0, n_tokens = time.time(), 0

    def done(summary: dict) -> None:
        nonlocal n_tokens
        n_tokens += summary["tokens"]
        if bar is not None:
            bar.update(summary["bytes"])
            bar.set_postfix_str(f"{n_tokens / max(time.time() - t0, 1e-9) / 1e6:.2f}M tokens/s")

    try:
        if plan["hub"] is not None:
            if todo:
                done(_prepare_hub(plan["hub"]["name"], text_field, tokenizer, heldout_fraction,
                                  _shard_path(out_dir, 0)))
        else:
            # pandas' factorize takes ~35% less CPU than dicts; importing it costs ~1.5 s (once: the
            # workers are forked after it).
            use_pandas = total_bytes >= _PANDAS_BYTES and _import_pandas()
            tasks = [(files[plan["shards"][k][0]], plan["shards"][k][1], plan["shards"][k][2],
                      tokenizer, heldout_fraction, _shard_path(out_dir, k), use_pandas) for k in todo]
            if workers == 1 or len(tasks) <= 1:
                for task in tasks:
                    done(_prepare_shard(task))
            else:
                import multiprocessing as mp

                method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
                with mp.get_context(method).Pool(min(workers, len(tasks))) as pool:
                    for summary in pool.imap_unordered(_prepare_shard, tasks):
                        done(summary)
    finally:
        if bar is not None:
            bar.close()
    t1 = time.time()
    manifest = _merge(out_dir, plan)
    write_json_atomic(manifest_path, manifest)
    shutil.rmtree(shard_dir, ignore_errors=True)
    os.remove(plan_path)
    logger.info("%s: %s tokens in %s lines, %s word types (tokenized in %.1f s, merged in %.1f s)",
                out_dir, f"{manifest['num_tokens']:,}", f"{manifest['num_sentences']:,}",
                f"{manifest['num_types'] - 1:,}", t1 - t0, time.time() - t1)
    return manifest


# -- reading -----------------------------------------------------------------------------------
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
        manifest = _read_json(os.path.join(path, MANIFEST))
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
        return np.load(os.path.join(self.path, name))

    def words(self) -> list[str]:
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


# -- elmo-pretrain's use -----------------------------------------------------------------------
IMPLICIT_DIR = "corpus"


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
    manifest = _read_json(os.path.join(corpus_dir, MANIFEST)) or {}
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
        PreparedCorpus(target).close()  # a changed source is an error: the checkpoint's data position is the old text's
        manifest = _read_json(os.path.join(target, MANIFEST))
        if manifest["tokenizer"] == tokenizer and manifest["heldout_fraction"] == heldout_fraction:
            return target
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


# -- elmo-prepare ------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``elmo-prepare TEXT... --out CORPUS_DIR``: exit 0, 2 on bad input, 130 when interrupted."""
    import argparse
    import sys

    from pretrain.config import TOKENIZERS

    p = argparse.ArgumentParser(
        prog="elmo-prepare", description="Tokenize a corpus once into memory-mappable arrays for "
        "elmo-pretrain --train CORPUS_DIR (interrupted: run the same command again to resume).")
    p.add_argument("text", nargs="+", metavar="TEXT",
                   help="text files, folders, globs (one sentence/paragraph per line), or a hub dataset name")
    p.add_argument("--out", required=True, metavar="CORPUS_DIR", help="the prepared corpus directory")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="whitespace")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--heldout-fraction", type=float, default=0.02,
                   help="held-out fraction whose counts are stored (training may use any; default 0.02)")
    p.add_argument("--text-field", default="text", help="column of a hub dataset holding the text")
    p.add_argument("--shard-mb", type=float, default=SHARD_BYTES / 2**20,
                   help="text per shard in MiB (the unit of work and of resuming; default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    try:
        if args.shard_mb <= 0:
            raise ValueError(f"--shard-mb must be > 0, got {args.shard_mb}")
        m = prepare(args.text, args.out, args.tokenizer, args.workers, args.heldout_fraction,
                    args.text_field, max(1, int(args.shard_mb * 2**20)), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"elmo-prepare: interrupted; run the same command again to resume ({args.out} keeps "
              "the finished shards)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"elmo-prepare: error: {e}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    print(f"{args.out}: {m['num_tokens']:,} tokens in {m['num_sentences']:,} lines, "
          f"{m['num_types'] - 1:,} word types, {args.tokenizer} tokenizer ({seconds:.1f} s, "
          f"{m['num_tokens'] / max(seconds, 1e-9) / 1e6:.2f}M tokens/s); train with: "
          f"elmo-pretrain --train {args.out} --out RUN_DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
