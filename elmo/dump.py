"""The ``elmo-embed`` file: a text file's ELMo vectors in HDF5, resumable and never silently wrong.

Layout (AllenNLP's ``elmo`` command): one float32 dataset per input line, named by the line's
index ("0", "1", ...), (L+1, n, 2P) for "all" and (n, 2P) for "top" / "average" (a blank line
gives n = 0, so keys never shift), plus ``sentence_to_index``: a JSON string mapping each line's
text to its key.

A line is what lies between two b"\\n": a lone "\\r" inside a line does not split it, and a
trailing "\\r\\n" is stripped with the other surrounding whitespace, and so is a byte-order mark
that starts the file (line 0 reads as it would without it). The whole input is checked to be UTF-8
before any work (the error names the file, line and byte).

Safety while writing (what ``--resume`` relies on):
- the output is written to ``OUTPUT.partial`` and renamed when complete;
- the partial file's root attribute ``elmo_embed_fingerprint`` records what it was made from:
  the input's size and SHA-256, a digest of the model (config, and every weight tensor's exact
  integer sum and a sample of its values: ``model_fingerprint``), the output layout and the
  dtype. A resume with any of them different is refused, naming the field;
- a dataset counts as written only once its attribute ``complete`` is set, which happens after its
  data has been flushed; on resume, datasets without it are written again, and each written one's
  shape is checked against its line's token count;
- before each chunk the free space is checked (HDF5 can crash the process when the disk fills
  up), and a full disk is a one-line ``DiskFullError`` that keeps the partial file for a resume.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import logging
import os
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Optional

import h5py
import numpy as np
import torch

from elmo.io import (OutputPathError, check_output, disk_full_as_error, drop_byte_order_mark,
                     ensure_free_space, replace_durably)

if TYPE_CHECKING:  # pragma: no cover
    from elmo.featurizer import Embedder

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")
FINGERPRINT_ATTR = "elmo_embed_fingerprint"
COMPLETE_ATTR = "complete"
INDEX_KEY = "sentence_to_index"
FINGERPRINT_VERSION = 1
_CHUNK_MARGIN = 1 << 20        # bytes kept free beyond a chunk's data (HDF5 metadata, flushes)
_PER_DATASET_BYTES = 4096      # HDF5 object header + attribute, generous


class InputScan(NamedTuple):
    size: int                             # bytes
    sha256: str
    num_lines: int
    token_counts: Optional[array.array]   # tokens on each line ("i" items), when asked for


def decode_line(raw: bytes, path: str, line_number: int) -> str:
    """One line's bytes -> its text (surrounding whitespace stripped; on line 1, a byte-order mark
    in front dropped first); a ValueError names the file, the 1-based line and the byte when it is
    not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}, line {line_number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                         f"column {e.start + 1}); convert the file to UTF-8 first, e.g. "
                         f"iconv -f latin1 -t utf-8") from None
    return (drop_byte_order_mark(text) if line_number == 1 else text).strip()


def read_lines(path: str) -> Iterator[str]:
    """The stripped text of each line of a UTF-8 file, split on b"\\n" only."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            yield decode_line(raw, path, i + 1)


def scan_input(path: str, token_counts: bool = False) -> InputScan:
    """One pass over the input before any work: size, SHA-256, line count, every line decoded
    (UTF-8 errors raised here, naming the line) and, with ``token_counts``, each line's token
    count (4 bytes a line: kept only when a resume needs them)."""
    digest, counts, size, n = hashlib.sha256(), array.array("i"), 0, 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            digest.update(raw)
            size += len(raw)
            text = decode_line(raw, path, n)
            if token_counts:
                counts.append(len(text.split()))
    return InputScan(size, digest.hexdigest(), n, counts if token_counts else None)


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SAMPLE = 1 << 16  # elements of each tensor hashed in full (a stride through it)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over a model's config and, for every tensor of its state_dict, its name, dtype,
    shape, the exact integer sum of all its bit patterns and the bytes of up to 65,536 elements
    taken at a stride through it.

    Any retrained, fine-tuned, converted or other model differs here, at a fraction of the cost
    of hashing every byte of a large model. Integer sums are exact, so the result does not depend
    on the number of threads.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode("utf-8"))
        if t.numel() == 0 or t.dtype.is_complex or t.dtype == torch.bool:
            if t.numel():
                digest.update(t.view(torch.uint8).numpy())
            continue
        ints = t.view(_INT_VIEW[t.element_size()]).numpy()
        digest.update(str(int(ints.sum(dtype=np.int64))).encode("ascii"))  # numpy: no int64 copy
        digest.update(np.ascontiguousarray(ints[:: max(1, ints.size // _SAMPLE)]))
    return digest.hexdigest()


def fingerprint(embedder: "Embedder", scan: InputScan, output: str) -> dict:
    return {"version": FINGERPRINT_VERSION, "input_size": scan.size, "input_sha256": scan.sha256,
            "model_sha256": model_fingerprint(embedder.model), "output": output,
            "dtype": str(embedder.dtype).replace("torch.", "")}


def read_fingerprint(f: h5py.File) -> Optional[dict]:
    value = f.attrs.get(FINGERPRINT_ATTR)
    if value is None:
        return None
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))


def fingerprint_mismatch(stored: Optional[dict], current: dict) -> Optional[str]:
    """None when they agree, else a phrase naming the first differing field."""
    if stored is None:
        return "it has no fingerprint (written by an older version or another program)"
    # Cheap, explicit fields first: a bfloat16 run also has other weights (converted).
    names = {"version": "the file format version", "output": "the output layout",
             "dtype": "the dtype", "input_size": "the input's size",
             "input_sha256": "the input's content", "model_sha256": "the model (config or weights)"}
    for key, what in names.items():
        if stored.get(key) != current[key]:
            if key in ("output", "dtype", "input_size", "version"):
                return f"{what} differs ({key}: {stored.get(key)!r} there, {current[key]!r} now)"
            return f"{what} differs"
    return None


def expected_shape(output: str, num_layers: int, dim: int, n_tokens: int) -> tuple:
    return (num_layers, n_tokens, dim) if output == "all" else (n_tokens, dim)


def _resume_state(f: h5py.File, partial: str, current: dict, scan: InputScan, output: str,
                  num_layers: int, dim: int) -> set:
    """Check a partial file against this run; returns the keys already written. Datasets not marked
    complete are deleted (they are written again)."""
    problem = fingerprint_mismatch(read_fingerprint(f), current)
    if problem is not None:
        raise ValueError(f"cannot resume {partial}: {problem}; resume only with the same input, "
                         "model, output layout and dtype, or start over with --force")
    done, dropped = set(), []
    for key in list(f.keys()):
        if key == INDEX_KEY:
            continue
        if not key.isdigit() or int(key) >= scan.num_lines:
            raise ValueError(f"cannot resume {partial}: dataset {key!r} is not a line of the input "
                             f"({scan.num_lines} lines); start over with --force")
        ds = f[key]
        if not ds.attrs.get(COMPLETE_ATTR, False):
            dropped.append(key)
            del f[key]
            continue
        want = expected_shape(output, num_layers, dim, scan.token_counts[int(key)])
        if ds.shape != want:
            raise ValueError(f"cannot resume {partial}: dataset {key!r} has shape {ds.shape} but line "
                             f"{int(key) + 1} of the input needs {want}; start over with --force")
        done.add(key)
    if dropped:
        logger.warning("%s: %d dataset(s) were created but not completely written (e.g. %s); they are "
                       "written again", partial, len(dropped), ", ".join(sorted(dropped, key=int)[:5]))
    return done


def embed_file(embedder: "Embedder", input_file: str, output_file: str, output: str = "all",
               batch_size: Optional[int] = None, sentence_index: bool = True, resume: bool = False,
               force: bool = True, progress: Optional[Callable[[int], None]] = None) -> int:
    """Embed a text file into ``output_file`` (see the module docstring); returns the line count.

    ``resume=True`` continues ``output_file + ".partial"`` after checking its fingerprint; with
    an existing ``output_file`` and no partial file, a matching fingerprint means the work is done
    (nothing is written). ``force=False`` refuses to replace an existing ``output_file`` (or to
    discard a partial file without ``resume``); the output is never one of the inputs.
    ``progress(n)`` is called with the lines already done on a resume, then after each chunk.
    """
    if output not in OUTPUT_FORMATS:
        raise ValueError(f"output must be one of {OUTPUT_FORMATS} for a file, got {output!r}")
    if resume and embedder.stateful:
        raise ValueError("resume cannot be combined with stateful mode: the carried LSTM state "
                         "of an interrupted run is not saved; rerun without resume")
    if not os.path.isfile(input_file):
        raise FileNotFoundError(f"input file not found: {input_file}")
    partial = output_file + ".partial"
    check_output(output_file, inputs=[input_file], force=True)
    check_output(partial, inputs=[input_file], force=True, what="partial output")
    if not force and not resume:
        check_output(output_file, force=False)
        if os.path.lexists(partial):
            raise OutputPathError(f"{partial} exists (an interrupted run); pass --resume to "
                                  "continue it or --force to start over")
    scan = scan_input(input_file, token_counts=resume and os.path.exists(partial))
    current = fingerprint(embedder, scan, output)
    L, D = embedder.num_layers, embedder.output_dim

    if resume and os.path.exists(output_file):
        problem = _existing_output_problem(output_file, current)
        if problem is None and not os.path.exists(partial):
            logger.info("%s is already complete for this input, model and layout", output_file)
            return scan.num_lines
        if problem is not None and not force:
            raise ValueError(f"{output_file} already exists and {problem}; pass --force to "
                             "overwrite it or choose another path")

    done: set = set()
    if resume and os.path.exists(partial):
        try:
            fout = h5py.File(partial, "r+")
        except OSError as e:  # killed while HDF5 wrote its metadata: nothing in it can be trusted
            logger.warning("cannot read %s (%s); starting over", partial, str(e).splitlines()[0])
            os.remove(partial)
            fout = None
        if fout is not None:
            try:
                done = _resume_state(fout, partial, current, scan, output, L, D)
            except BaseException:
                fout.close()
                raise
            logger.info("resuming %s: %d of %d lines already embedded", partial, len(done),
                        scan.num_lines)
            if progress is not None and done:
                progress(len(done))
    else:
        if os.path.exists(partial):
            os.remove(partial)
        fout = None
    if fout is None:
        ensure_free_space(partial, _CHUNK_MARGIN)
        with disk_full_as_error(partial):
            fout = h5py.File(partial, "w")
            fout.attrs[FINGERPRINT_ATTR] = json.dumps(current)
            fout.flush()

    batch_size = batch_size or embedder.batch_size
    with fout:
        pending = ((i, text.split()) for i, text in enumerate(read_lines(input_file))
                   if str(i) not in done)
        while True:
            chunk = list(itertools.islice(pending, batch_size * 16))
            if not chunk:
                break
            arrays = list(embedder.embed_sentences([t for _, t in chunk], output=output,
                                                   batch_size=batch_size))
            ensure_free_space(partial, sum(a.nbytes + _PER_DATASET_BYTES for a in arrays) + _CHUNK_MARGIN)
            with disk_full_as_error(partial):
                written = [fout.create_dataset(str(i), data=a, dtype="float32")
                           for (i, _), a in zip(chunk, arrays)]
                fout.flush()  # the data first, then the marks that say it is there
                for ds in written:
                    ds.attrs[COMPLETE_ATTR] = True
                fout.flush()
            if progress is not None:
                progress(len(chunk))
        if INDEX_KEY in fout:
            del fout[INDEX_KEY]
        if sentence_index:
            index = json.dumps({text: str(i) for i, text in enumerate(read_lines(input_file))})
            ensure_free_space(partial, 2 * len(index.encode("utf-8")) + _CHUNK_MARGIN)
            with disk_full_as_error(partial):
                ds = fout.create_dataset(INDEX_KEY, (1,), dtype=h5py.string_dtype())
                ds[0] = index
    replace_durably(partial, output_file)
    return scan.num_lines


def _existing_output_problem(path: str, current: dict) -> Optional[str]:
    try:
        with h5py.File(path, "r") as f:
            return fingerprint_mismatch(read_fingerprint(f), current)
    except OSError as e:
        return f"it is not a readable HDF5 file ({str(e).splitlines()[0]})"
