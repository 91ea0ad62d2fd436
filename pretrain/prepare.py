"""``elmo-prepare``: text tokenized once into a prepared corpus (the files: ``pretrain.prepared``).

    prepare(specs, out_dir, tokenizer, workers)   # the library call; main() is the command

Files, folders, globs or a hub dataset are read exactly as ``elmo-pretrain --train`` reads them
(the same lines, the same tokens, the same held-out hash). Local text is cut into shards of whole
lines (``shard_bytes``, planned first and saved as ``plan.json``); ``workers`` processes tokenize
shards in parallel, each written atomically to ``CORPUS_DIR/shards/`` with its own type table and
counts; the shards are then merged in order into the final arrays, type ids in order of first
appearance (memory: one shard's tokens as Python strings per worker, the merged type table, never
the corpus). A killed preparation resumes from its finished shards and gives a byte-identical
result; the manifest is written last and the shards are then deleted.

Read top to bottom: the plan (which bytes form each shard), one shard (lines -> local type ids and
counts), the merge (shards -> the corpus files), ``prepare`` (resume, workers, progress), ``main``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zlib
from typing import Iterable, Optional, Sequence

import numpy as np

from elmo.chars import BOS_TOKEN, EOS_TOKEN, MAX_CHARACTERS_PER_TOKEN, word_to_char_ids
from elmo.io import atomic_open, atomic_path, clean_orphans, write_json_atomic
from pretrain.corpus import (_looks_local, check_text_file, get_tokenizer, iter_lines, open_text, resolve_files,
                             text_chunks)
from pretrain.prepared import (_FILES, ALPHA, CHARS, COUNTS, FORMAT, HASHES, HELD_COUNTS, IDENTITY, MANIFEST,
                               OFFSETS, PLAN, SHARDS, TOKENS, VERSION, WORDS, read_json)

logger = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20
_PANDAS_BYTES = 48 << 20  # from this much text pandas.factorize replaces the dict (see prepare)


# -- the plan: which bytes of which file form each shard ---------------------------------------------
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
                if stop < size:  # move the cut to just after the next newline (or to the end)
                    f.seek(stop - 1)
                    stop = size
                    while block := f.read(1 << 16):
                        nl = block.find(b"\n")
                        if nl >= 0:
                            stop = f.tell() - len(block) + nl + 1
                            break
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


# -- one shard: lines -> local type ids, counts ---------------------------------------------------------
def _table_ids(new_words, index: dict, words: list, dtype) -> np.ndarray:
    """The type ids of ``new_words`` (distinct) in the table ``words`` (with its ``index``), each
    unseen word appended: type ids in order of first appearance, in a shard and across shards."""
    def ids():
        for w in new_words:
            t = index.get(w)
            if t is None:
                t = index[w] = len(words)
                words.append(w)
            yield t

    return np.fromiter(ids(), dtype, len(new_words))


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

    def add_lines(self, lines: Iterable[str]) -> None:
        """Tokenize ``lines`` (blank ones skipped, as the raw path skips them) and add them."""
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
        if not lengths:
            return
        if self.use_pandas:  # pandas (a dependency of datasets) hashes each token once, in C
            import pandas

            codes, uniques = pandas.factorize(np.array(tokens, dtype=object))
            self.ids.append(_table_ids(uniques, self.index, self.words, np.int32)[codes])
        else:  # the chunk's types in order of first appearance, then each token looked up
            _table_ids(dict.fromkeys(tokens), self.index, self.words, np.int32)
            self.ids.append(np.fromiter(map(self.index.__getitem__, tokens), np.int32, len(tokens)))
        self.lengths.append(np.array(lengths, dtype=np.int32))
        self.hashes.append(np.array(hashes, dtype=np.uint32))

    def save(self, path: str) -> dict:
        """Write the shard (its tokens, line lengths and hashes, its types and their counts)."""
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int32)
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint32)
        counts = np.bincount(ids, minlength=len(self.words)).astype(np.int64)
        held = np.repeat(hashes < self.threshold, lengths)
        held_counts = np.bincount(ids[held], minlength=len(self.words)).astype(np.int64)
        blob = "\n".join(self.words).encode("utf-8", "surrogatepass")
        with atomic_path(path, ".npz") as tmp:
            np.savez(tmp, ids=ids, lengths=lengths, hashes=hashes, counts=counts,
                     held_counts=held_counts, words=np.frombuffer(blob, np.uint8))
        return {"tokens": len(ids), "sentences": len(lengths)}


def _prepare_shard(task: tuple) -> dict:
    """Worker: tokenize one shard of one file and write ``out_path``."""
    path, start, stop, tokenizer, fraction, out_path, use_pandas = task
    enc = _ShardEncoder(tokenizer, fraction, use_pandas)
    for text in text_chunks(path, start, stop):  # as the raw path reads them; lines end at \n
        enc.add_lines(text.split("\n"))
    summary = enc.save(out_path)
    summary["bytes"] = stop - start
    return summary


def _have_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _prepare_hub(spec: str, text_field: str, tokenizer: str, fraction: float, out_path: str) -> dict:
    """A hub dataset as one shard (read through ``datasets``, 10,000 lines at a time)."""
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


# -- the merge: shards in order -> the corpus files ------------------------------------------------
def _shard_path(out_dir: str, k: int) -> str:
    return os.path.join(out_dir, SHARDS, f"shard-{k:06d}.npz")


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


def _merge(out_dir: str, plan: dict, max_characters: int = MAX_CHARACTERS_PER_TOKEN) -> dict:
    """Shards in order -> the corpus files; returns the manifest (written by the caller)."""
    paths = [_shard_path(out_dir, k) for k in range(len(plan["shards"]))]
    n_tokens = n_sentences = 0
    for p in paths:
        with np.load(p) as z:
            n_tokens += len(z["ids"])
            n_sentences += len(z["lengths"])
    if n_sentences == 0:
        where = plan["hub"]["name"] if plan["hub"] else ", ".join(s["path"] for s in plan["sources"])
        raise ValueError(f"{where}: no training text (every line is blank)")
    words, counts, held_counts = _merge_tokens(out_dir, paths, n_tokens, n_sentences)
    _write_types(out_dir, words, counts, held_counts, max_characters)
    manifest = {k: plan[k] for k in IDENTITY}
    manifest.update({"num_tokens": n_tokens, "num_sentences": n_sentences, "num_types": len(words),
                     "heldout_tokens": int(held_counts.sum()), "max_characters": max_characters,
                     "files": list(_FILES)})
    return manifest


def _merge_tokens(out_dir: str, paths: Sequence[str], n_tokens: int, n_sentences: int
                  ) -> tuple[list, np.ndarray, np.ndarray]:
    """TOKENS, OFFSETS and HASHES written from the shards in order, each shard's types mapped into
    one table (type 0 padding, 1 <S>, 2 </S>); returns the table and each type's counts in the
    whole corpus and in its held-out lines."""
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
                mapping = _table_ids(blob.split("\n") if blob else [], index, words, np.int64)
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
    return words, counts[: len(words)], held_counts[: len(words)]


def _write_types(out_dir: str, words: list, counts: np.ndarray, held_counts: np.ndarray,
                 max_characters: int) -> None:
    """The per-type files: COUNTS, HELD_COUNTS, CHARS, ALPHA and WORDS."""
    V = len(words)
    alpha = np.empty(V, np.int32)
    alpha[sorted(range(V), key=words.__getitem__)] = np.arange(V, dtype=np.int32)
    for name, array in ((COUNTS, counts), (HELD_COUNTS, held_counts), (CHARS, char_ids_of(words, max_characters)),
                        (ALPHA, alpha)):
        with atomic_open(os.path.join(out_dir, name), "wb") as f:
            np.lib.format.write_array(f, array, allow_pickle=False)
    with atomic_open(os.path.join(out_dir, WORDS), "wb") as f:  # type 1, 2, ...: one word a line
        f.write("".join(w + "\n" for w in words[1:]).encode("utf-8", "surrogatepass"))


# -- prepare: plan, tokenize the missing shards, merge ----------------------------------------------
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
    manifest = read_json(manifest_path)
    same = {k: plan[k] for k in IDENTITY}
    if manifest is not None and {k: manifest.get(k) for k in same} == same:
        # (a hub dataset cannot be checked for changes: the same name counts as the same text)
        logger.info("%s: already prepared from these sources; nothing to do", out_dir)
        shutil.rmtree(os.path.join(out_dir, SHARDS), ignore_errors=True)
        return manifest
    if manifest is not None:  # another preparation: it is replaced
        logger.info("%s: the sources or settings changed; preparing again", out_dir)
        os.remove(manifest_path)
    old_plan = read_json(plan_path)
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
            # pandas' factorize costs less CPU than dicts on a large corpus, but importing it takes
            # a while: only from _PANDAS_BYTES of text (imported once: the workers fork after it).
            use_pandas = total_bytes >= _PANDAS_BYTES and _have_pandas()
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


# -- elmo-prepare -----------------------------------------------------------------------------------
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
