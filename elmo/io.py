"""Files a user owns are never overwritten by accident, half written, or silently left behind.

One home for the file plumbing of every command (``elmo-embed``, ``elmo-export``,
``elmo-pretrain``, ``elmo-task``):

    check_output(path, inputs=[...], force=args.force)   # before any work: refuse a bad output path
    with atomic_open(path, "w") as f: f.write(text)      # PATH.tmp.PID, fsync, os.replace
    with atomic_path(path) as tmp: torch.save(obj, tmp)  # for libraries that open by name
    write_json_atomic(path, data); copy_atomic(src, dst)
    clean_orphans(folder)                                # *.tmp.PID left by a killed process
    ensure_free_space(path, nbytes)                      # before a write that would fill the disk
    text = drop_byte_order_mark(first_line)              # reading: the U+FEFF some editors put first

A temporary file lives in the destination's folder (so ``os.replace`` is a rename on one file
system) and is named ``PATH.tmp.PID[suffix]``: the PID tells ``clean_orphans`` whether its writer
still runs. On any exception the temporary file is removed and the destination is untouched.
A full disk becomes a ``DiskFullError`` (an ``OSError`` with errno ENOSPC) whose one-line message
names the path and the free space, instead of torch's "unexpected pos" or h5py's error flood.

Standard library only, so every package can import it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
from typing import Any, AnyStr, Iterable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_TMP_RE = re.compile(r"\.tmp\.(\d+)(\.[A-Za-z0-9]+)?$")
# What a full disk looks like when it reaches Python through torch or HDF5 rather than as ENOSPC.
_DISK_FULL_SIGNS = ("no space left on device", "errno = 28", "unexpected pos", "file write failed",
                    "disk quota exceeded")


class OutputPathError(ValueError):
    """An output path that must not be written (it is an input, exists, is a folder, ...)."""


class DiskFullError(OSError):
    """A write failed because the file system is full; the message names the path and free space."""

    def __init__(self, path: PathLike, detail: str = "") -> None:
        path = os.fspath(path)
        free = free_bytes(path)
        folder = os.path.dirname(os.path.abspath(path))
        where = f"{format_bytes(free)} free in {folder}" if free is not None else f"in {folder}"
        msg = (f"cannot write {path}: no space left on the device ({where}); free some space or "
               "write to another folder")
        if detail:
            msg += f" [{detail}]"
        super().__init__(errno.ENOSPC, msg)
        self.path, self.free = path, free

    def __str__(self) -> str:
        return self.strerror


# -- reading text files -----------------------------------------------------------------------
BYTE_ORDER_MARK = "\ufeff"


def drop_byte_order_mark(start: AnyStr) -> AnyStr:
    """``start`` (the text or the bytes a file begins with: its first line or chunk) without the
    UTF-8 byte-order mark U+FEFF (bytes EF BB BF) in front, if it has one.

    Windows tools (Notepad, Excel's "CSV UTF-8") write one at the start of a file; it is not part
    of the first word. Every reader of user text calls this on the file's first piece only: a
    U+FEFF anywhere else is text (a zero-width no-break space) and stays. Only one mark is
    dropped, as the ``utf-8-sig`` codec does."""
    mark = BYTE_ORDER_MARK if isinstance(start, str) else b"\xef\xbb\xbf"
    return start[len(mark):] if start.startswith(mark) else start


# -- temporary names and atomic replacement ---------------------------------------------------
def temp_path(path: PathLike, suffix: str = "") -> str:
    """``PATH.tmp.PID[suffix]``: in the destination's folder, named after this process.

    ``suffix`` keeps an extension for libraries that pick a format from it (``".png"``)."""
    return f"{os.fspath(path)}.tmp.{os.getpid()}{suffix}"


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: PathLike, dst: PathLike) -> None:
    """Rename the finished file ``src`` to ``dst`` (one file system), synced to disk first and
    the rename after it. For a file written in place under its own name (a resumable
    ``OUTPUT.partial``); ``atomic_path`` does this for a temporary file."""
    _fsync_path(os.fspath(src))
    os.replace(src, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(os.fspath(dst))))


def _fsync_dir(folder: str) -> None:
    # The rename itself is durable only once the folder is synced; not every OS allows this.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception from a write means the disk (or quota) is full."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    return isinstance(error, (OSError, RuntimeError)) and any(s in text for s in _DISK_FULL_SIGNS)


@contextlib.contextmanager
def disk_full_as_error(path: PathLike) -> Iterator[None]:
    """Turn a disk-full failure inside the block into a one-line ``DiskFullError`` for ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "", fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path to write ``path`` through; on success it replaces ``path``.

    For writers that take a file name (``torch.save``, ``h5py.File``, matplotlib). The folder
    must exist. On any exception the temporary file is removed, ``path`` is left as it was, and a
    full disk is raised as a ``DiskFullError``.
    """
    path = os.fspath(path)
    tmp = temp_path(path, suffix)
    try:
        with disk_full_as_error(path):
            yield tmp
            if fsync:
                _fsync_path(tmp)
            os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    if fsync:
        _fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: Optional[str] = "utf-8",
                newline: Optional[str] = None, fsync: bool = True) -> Iterator[Any]:
    """``open()`` for writing through a temporary file that replaces ``path`` when the block ends.

    ``mode`` is "w" (text, ``encoding``) or "wb". Same guarantees as ``atomic_path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, fsync=False) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())


def write_json_atomic(path: PathLike, data: Any, indent: Optional[int] = 2) -> None:
    """Write ``data`` as JSON (plus a final newline) to ``path``, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8, newlines as given), atomically."""
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def copy_atomic(src: PathLike, dst: PathLike) -> None:
    """Copy the file ``src`` to ``dst``, atomically (``dst`` is never half written)."""
    with atomic_open(dst, "wb") as f, open(src, "rb") as fin:
        shutil.copyfileobj(fin, f)


# -- output checks (before any work) ----------------------------------------------------------
def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same path, a symlink to it, or a hard link."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), force: bool = False,
                 what: str = "output", force_flag: str = "--force",
                 allow_existing: bool = False, create_folder: bool = False) -> str:
    """Refuse an output path before any work is done; returns the path.

    Raises ``OutputPathError`` (a ``ValueError`` with a one-line message naming the path, what
    was expected and what to do) when the path is empty, is a folder, lies in a folder that does
    not exist or cannot be written, is the same file as one of ``inputs`` (also through a symlink
    or a hard link; ``force`` does not allow this), or already exists and neither ``force`` nor
    ``allow_existing`` (e.g. the caller resumes it) is set. ``None`` entries of ``inputs`` are
    skipped, so optional inputs can be passed as they are. ``create_folder=True`` accepts a
    missing folder (the caller creates it); its nearest existing ancestor must then be writable.
    """
    if path is None or os.fspath(path) == "":
        raise OutputPathError(f"the {what} path is empty; give a file path")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{what} {path} is a directory; give a file path (e.g. "
                              f"{os.path.join(path, 'out')})")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise OutputPathError(f"{what} {path} is the input file {os.fspath(source)}; writing it "
                                  "would destroy the input: choose another output path")
    folder = os.path.dirname(os.path.abspath(path))
    if create_folder:
        while not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OutputPathError(f"the folder {folder} of {what} {path} does not exist; create it "
                              "first (mkdir -p) or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"the folder {folder} of {what} {path} is not writable; choose "
                              "another path")
    if os.path.lexists(path) and not (force or allow_existing):
        raise OutputPathError(f"{what} {path} already exists; pass {force_flag} to overwrite it or "
                              "choose another path")
    return path


# -- leftovers and free space -----------------------------------------------------------------
def pid_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def clean_orphans(folder: PathLike, pattern: str = "*") -> list:
    """Remove ``PATTERN.tmp.PID[.ext]`` files in ``folder`` whose process no longer runs.

    Temporary files of a killed run (or one that hit a full disk) are deleted; those of live
    processes, including this one, are kept. Returns the removed paths (sorted). PIDs are those
    of this machine: do not share one output folder between machines' writers.
    """
    folder = os.fspath(folder)
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern + ".tmp.*"))):
        m = _TMP_RE.search(path)
        if m is None or not os.path.isfile(path):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not pid_running(pid):
            _remove_quietly(path)
            removed.append(path)
    return removed


def free_bytes(path: PathLike) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (or its nearest existing folder)."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def ensure_free_space(path: PathLike, nbytes: int) -> None:
    """Raise ``DiskFullError`` for ``path`` if fewer than ``nbytes`` are free where it is written.

    For writers that cannot recover from a full disk (HDF5 may crash the process): check before
    each chunk instead of after."""
    free = free_bytes(path)
    if free is not None and free < nbytes:
        raise DiskFullError(path, f"{format_bytes(nbytes)} needed")


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
