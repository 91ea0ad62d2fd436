"""Training text: files, globs, folders or a hub dataset, tokenized.

One line is one training "sentence" (a sentence or a paragraph); blank lines are skipped. Lines end
at ``\n`` only (a ``\r\n`` ending is one line break, a lone ``\r`` stays inside its line), as
``elmo-embed`` and the task readers read them: local files are read here, not through ``datasets``'
text loader, which splits at a lone ``\r`` too. A hub dataset name goes through ``datasets``. The
held-out part is a separate input, or a fraction of the lines chosen by a hash of the line's text
(so it is the same in every epoch, in streaming mode, and duplicated lines never straddle the
split). Files are checked before reading: an empty file is skipped with a warning, a file that
looks binary is an error naming it, and a few bytes that are not UTF-8 anywhere in the file are
replaced (a warning names the first line). A byte-order mark that starts a file is dropped.

``EncodedCorpus`` holds a corpus in memory as type ids (4 bytes per token); ``StreamingCorpus``
re-reads the text each epoch for corpora larger than memory.
"""

from __future__ import annotations

import codecs
import glob
import logging
import os
import zlib
from collections import Counter
from typing import Iterator, Optional, Sequence

import numpy as np

from elmo.io import drop_byte_order_mark
from elmo.tokenize import get_tokenizer
from pretrain.vocab import WordTable

logger = logging.getLogger(__name__)

_SNIFF_BYTES = 1 << 16
_CHUNK_BYTES = 4 << 20


def resolve_files(specs: Sequence[str]) -> list[str]:
    """Files, glob patterns and folders (all files below, recursively) -> sorted file list."""
    files: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                           if os.path.isfile(p) and not os.path.basename(p).startswith("."))
            if not found:
                raise ValueError(f"{spec}: the folder holds no files")
        elif os.path.isfile(spec):
            found = [spec]
        else:
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"{spec}: no such file, folder or glob match")
        files.extend(found)
    return list(dict.fromkeys(files))


def check_text_file(path: str) -> bool:
    """False for an empty file (skip it); raise for a binary one or one that is mostly not UTF-8;
    warn (naming the first line) when a few bytes anywhere in the file are not UTF-8.

    The whole file is decoded (in 1 MiB pieces, about a second per GB), not only its start: bytes
    that are not UTF-8 are read as U+FFFD, and that should never happen without a word."""
    size = os.path.getsize(path)
    if size == 0:
        logger.warning("%s: empty file, skipped", path)
        return False
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        raise ValueError(f"{path}: looks like a binary file (it contains NUL bytes); the corpus "
                         "must be UTF-8 text, one sentence or paragraph per line")
    bad, first_line, first_column = _count_non_utf8(path)
    if bad > max(8, size // 100):
        raise ValueError(f"{path}: {bad} bytes are not UTF-8 (the first on line {first_line}, column "
                         f"{first_column}); this does not look like UTF-8 text (convert it, e.g. iconv -f "
                         "latin1 -t utf-8)")
    if bad:
        logger.warning("%s: %d byte(s) are not UTF-8 (the first on line %d, column %d); they are "
                       "read as U+FFFD", path, bad, first_line, first_column)
    return True


def _count_non_utf8(path: str, chunk: int = 1 << 20) -> tuple[int, int, int]:
    """(invalid UTF-8 sequences, line and column of the first (0, 0 when none)).

    A strict incremental decoder reads the file until the first error, which locates it; from
    there a replacing decoder counts the errors in the rest. A U+FFFD that the file itself holds
    (EF BF BD) is text, not an error."""
    strict = codecs.getincrementaldecoder("utf-8")("strict")
    counting = None  # the replacing decoder, once an error was found
    bad, first_line, first_column, lines, column, tail = 0, 0, 0, 0, 0, b""
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            final = not data
            if counting is None:
                pending = strict.getstate()[0]
                try:
                    strict.decode(data, final=final)
                except UnicodeDecodeError as e:
                    pos = e.start - len(pending)  # in data; < 0: in the bytes held from the last piece
                    newline = data.rfind(b"\n", 0, pos) if pos > 0 else -1
                    first_line = lines + data.count(b"\n", 0, max(pos, 0)) + 1
                    first_column = pos - newline if newline >= 0 else column + pos + 1
                    counting = codecs.getincrementaldecoder("utf-8")("replace")
                    data, tail = pending + data, b""
            if counting is not None:
                text = counting.decode(data, final=final)
                genuine = (tail + data).count(b"\xef\xbf\xbd") - tail.count(b"\xef\xbf\xbd")
                bad += max(0, text.count("\ufffd") - genuine)
                tail = (tail + data)[-2:]
            if final:
                return bad, first_line, first_column
            newline = data.rfind(b"\n")
            column = len(data) - newline - 1 if newline >= 0 else column + len(data)
            lines += data.count(b"\n")


def check_heldout(specs: Sequence[str]) -> None:
    """An explicit ``--heldout`` whose files are all empty gets its own message (not the one about
    training text)."""
    if not all(_looks_local(s) for s in specs):
        return
    files = resolve_files(specs)
    if not any(os.path.getsize(f) > 0 for f in files):
        raise ValueError(f"--heldout {', '.join(specs)}: every file is empty; give held-out text (one "
                         "sentence per line), or leave --heldout out to hold out data.heldout_fraction "
                         "of the training lines")
    if not any(_has_text(f) for f in files):
        raise ValueError(f"--heldout {', '.join(specs)}: no held-out text (every line is blank); give "
                         "held-out text, or leave --heldout out to hold out a fraction of the training lines")


def _has_text(path: str) -> bool:
    """Whether a file has a line that is not blank (reads up to the first one; a byte-order mark
    alone is no text)."""
    with open(path, "rb") as f:
        first = drop_byte_order_mark(f.readline())
        return bool(first.strip()) or any(line.strip() for line in f)


def is_heldout(line: str, fraction: float) -> bool:
    """A line's side of the split: a hash of its text, stable across runs, seeds and platforms."""
    if fraction <= 0.0:
        return False
    h = zlib.crc32(line.encode("utf-8", "replace"))
    return h < fraction * 4294967296.0


def _looks_local(spec: str) -> bool:
    """A path or glob, as opposed to a hub dataset name such as ``user/name`` or ``name:split``."""
    if os.path.exists(spec) or glob.has_magic(spec) or os.path.isabs(spec):
        return True
    if spec.startswith((".", "~")) or os.path.splitext(spec.partition(":")[0])[1]:
        return True  # ./x, ~/x, x.txt
    parent = os.path.dirname(spec)
    return bool(parent) and os.path.isdir(parent)


def text_chunks(path: str, start: int = 0, stop: Optional[int] = None,
                chunk_bytes: int = _CHUNK_BYTES) -> Iterator[str]:
    """Bytes [start, stop) of a file as text in chunks of whole lines (about ``chunk_bytes`` each;
    a longer line is one chunk), decoded as UTF-8 with bad bytes replaced by U+FFFD
    (``check_text_file`` warns about them).

    Lines end at ``\n`` only: ``\r\n`` becomes ``\n``, a lone ``\r`` stays inside its line, and a
    ``\r`` that ends the range is dropped (the end of the file's last line). A byte-order mark
    that starts the file (``start`` 0) is dropped (``elmo.io.drop_byte_order_mark``). Every chunk
    but the range's last ends with ``\n``; ``lines_of`` cuts a chunk into its lines."""
    if stop is None:
        stop = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(start)
        remaining, carry, first = stop - start, b"", start == 0
        while remaining > 0 or carry:
            data = f.read(min(chunk_bytes, remaining)) if remaining > 0 else b""
            remaining -= len(data)
            data = carry + data
            if remaining > 0:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than the chunk: read on
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            text = data.decode("utf-8", "replace")
            if first:
                text, first = drop_byte_order_mark(text), False
            if "\r" in text:
                text = text.replace("\r\n", "\n")
                if remaining <= 0 and text.endswith("\r"):
                    text = text[:-1]
            yield text


def lines_of(text: str) -> list[str]:
    """A chunk of ``text_chunks`` -> its lines (without their ``\n``; blank ones included)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the piece after the chunk's final newline
    return lines


def file_lines(path: str) -> Iterator[str]:
    """Every line of a text file (blank ones included), split at ``\n`` only (see ``text_chunks``)."""
    for text in text_chunks(path):
        yield from lines_of(text)


def _text_files(specs: Sequence[str]) -> Optional[list[str]]:
    """The files (checked, empty ones skipped) of local inputs; None for a hub dataset name."""
    local = [s for s in specs if _looks_local(s)]
    if local and len(local) == len(specs):
        files = [f for f in resolve_files(specs) if check_text_file(f)]
        if not files:
            raise ValueError(f"{', '.join(specs)}: every file is empty; there is no text to train on")
        return files
    return None


def _rows(files: list) -> Iterator[dict]:
    """``datasets`` generator: one {"text": line} per line of ``files`` (a shard per file)."""
    for path in files:
        for line in file_lines(path):
            yield {"text": line}


def read_lines(specs: Sequence[str], text_field: str = "text") -> Iterator[str]:
    """Non-blank lines of local inputs (read directly, in file order) or of a hub dataset."""
    files = _text_files(specs)
    if files is None:
        yield from iter_lines(open_text(specs, False, text_field))
        return
    for path in files:
        for line in file_lines(path):
            if line and not line.isspace():
                yield line


def open_text(specs: Sequence[str], streaming: bool, text_field: str = "text"):
    """A ``datasets`` dataset of lines: for local inputs an ``IterableDataset`` (one shard per file,
    lines read by ``file_lines``; ``streaming`` makes no difference), else a hub dataset name
    (needs network)."""
    import datasets

    files = _text_files(specs)
    if files is not None:
        return datasets.IterableDataset.from_generator(
            _rows, features=datasets.Features({"text": datasets.Value("string")}),
            gen_kwargs={"files": files})
    local = [s for s in specs if _looks_local(s)]
    if local:
        raise ValueError(f"mix of local paths and other names: {list(specs)}; pass either files, "
                         "folders and globs, or one hub dataset name")
    if len(specs) != 1:
        raise FileNotFoundError(f"not found: {list(specs)}; pass files, folders or globs (or one "
                                "hub dataset name)")
    name, _, split = specs[0].partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=streaming)
    except Exception as e:  # offline, unknown name, ...
        raise ValueError(f"{specs[0]}: no such file or folder, and loading it as a hub dataset "
                         f"failed ({type(e).__name__}: {e})") from None
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    return ds


def iter_lines(dataset) -> Iterator[str]:
    """Non-blank lines of a ``datasets`` dataset (map-style in batches, or iterable)."""
    rows = (line for b in dataset.iter(batch_size=1000) for line in b["text"]) \
        if hasattr(dataset, "__len__") else (r["text"] for r in dataset)
    for line in rows:
        if line and not line.isspace():
            yield line


class EncodedCorpus:
    """Sentences as type ids in one flat int32 array (``offsets`` has one entry more)."""

    def __init__(self, table: WordTable, sentences: Sequence[np.ndarray]) -> None:
        self.table = table
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.ids = np.concatenate(list(sentences)).astype(np.int32) if len(sentences) else \
            np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def order(self, epoch: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """This rank's sentence order for an epoch: a seeded shuffle, every ``world``-th one."""
        perm = np.random.default_rng([seed, epoch]).permutation(len(self))
        return perm[rank::world]

    def sentences(self, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  start: int = 0) -> Iterator[np.ndarray]:
        for i in self.order(epoch, seed, rank, world)[start:]:
            yield self[int(i)]


def load_corpus(train: Sequence[str], heldout: Optional[Sequence[str]], table: WordTable,
                tokenizer: str, heldout_fraction: float, text_field: str = "text"
                ) -> tuple[EncodedCorpus, EncodedCorpus]:
    """Read, tokenize and encode the training and held-out text in memory."""
    tokenize = get_tokenizer(tokenizer)
    train_ids, held_ids = [], []
    fraction = 0.0 if heldout else heldout_fraction
    for line in read_lines(train, text_field):
        tokens = tokenize(line)
        if tokens:
            (held_ids if is_heldout(line, fraction) else train_ids).append(table.encode(tokens))
    if heldout:
        for line in read_lines(heldout, text_field):
            tokens = tokenize(line)
            if tokens:
                held_ids.append(table.encode(tokens))
    if not train_ids:
        raise ValueError(f"{', '.join(train)}: no training text (no non-blank line"
                         f"{' outside the held-out fraction' if fraction else ''})")
    return EncodedCorpus(table, train_ids), EncodedCorpus(table, held_ids)


class StreamingCorpus:
    """Re-reads the training lines every epoch (shuffled in a buffer); never all in memory."""

    def __init__(self, train: Sequence[str], table: WordTable, tokenizer: str,
                 heldout_fraction: float, shuffle_buffer: int, text_field: str = "text") -> None:
        self.specs, self.table = list(train), table
        self.tokenize = get_tokenizer(tokenizer)
        self.fraction, self.shuffle_buffer = heldout_fraction, shuffle_buffer
        self.text_field = text_field

    def _dataset(self, epoch: Optional[int], seed: int, rank: int, world: int):
        ds = open_text(self.specs, True, self.text_field)
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        if epoch is not None:
            ds = ds.shuffle(seed=seed * 100003 + epoch, buffer_size=self.shuffle_buffer)
        return ds

    def scan(self, heldout_max_tokens: Optional[int]) -> tuple[Counter, int, int, list]:
        """One pass in file order: word counts, token and sentence counts of the training side,
        and the held-out sentences (type ids; at most ``heldout_max_tokens`` tokens are kept)."""
        counts, n_tokens, n_sentences, heldout, n_held = Counter(), 0, 0, [], 0
        for line in iter_lines(self._dataset(None, 0, 0, 1)):
            tokens = self.tokenize(line)
            if not tokens:
                continue
            if is_heldout(line, self.fraction):
                if heldout_max_tokens is None or n_held < heldout_max_tokens:
                    heldout.append(self.table.encode(tokens))
                    n_held += len(tokens)
            else:
                counts.update(tokens)
                n_tokens += len(tokens)
                n_sentences += 1
        if n_tokens == 0:
            raise ValueError(f"{', '.join(self.specs)}: no training text")
        return counts, n_tokens, n_sentences, heldout

    def sentences(self, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  start: int = 0) -> Iterator[np.ndarray]:
        n = 0
        for line in iter_lines(self._dataset(epoch, seed, rank, world)):
            tokens = self.tokenize(line)
            if not tokens or is_heldout(line, self.fraction):
                continue
            n += 1
            if n > start:
                yield self.table.encode(tokens)
