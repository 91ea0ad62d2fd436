"""elmo.io: atomic writes, output checks before any work, orphaned temporaries, a full disk."""

import errno
import json
import os
import subprocess
import sys

import pytest

from elmo import io as eio


def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"):
        with eio.atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # the temporary file is gone
    with eio.atomic_open(path, "w") as f:
        f.write("new")
        assert os.path.exists(eio.temp_path(path)) and path.read_text(encoding="utf-8") == "old"
    assert path.read_text(encoding="utf-8") == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_replace_durably_renames_a_finished_partial_file(tmp_path, monkeypatch):
    partial, out = tmp_path / "out.hdf5.partial", tmp_path / "out.hdf5"
    partial.write_bytes(b"new")
    out.write_bytes(b"old")
    synced = []
    monkeypatch.setattr(eio.os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    ino = os.stat(partial).st_ino
    eio.replace_durably(partial, out)
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.hdf5"]
    assert synced[0] == ino  # the file's data is synced before the rename ...
    assert synced[-1] == os.stat(tmp_path).st_ino  # ... and the folder after it
    with pytest.raises(FileNotFoundError):
        eio.replace_durably(partial, out)  # nothing to rename: out stays
    assert out.read_bytes() == b"new"


def test_atomic_path_for_named_writers_and_keyboard_interrupt(tmp_path):
    path = tmp_path / "w.bin"
    with eio.atomic_path(path, suffix=".png") as tmp:
        assert tmp == f"{path}.tmp.{os.getpid()}.png"
        with open(tmp, "wb") as f:
            f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(KeyboardInterrupt):
        with eio.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"zz")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"\x00\x01" and sorted(os.listdir(tmp_path)) == ["w.bin"]


def test_json_text_and_copy(tmp_path):
    eio.write_json_atomic(tmp_path / "d.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == json.dumps(
        {"b": 1, "a": [1, 2]}, indent=2) + "\n"
    eio.write_text_atomic(tmp_path / "t.txt", "x\r\ny\n")
    assert (tmp_path / "t.txt").read_bytes() == b"x\r\ny\n"
    eio.copy_atomic(tmp_path / "t.txt", tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_bytes() == b"x\r\ny\n"
    with pytest.raises(ValueError, match="mode"):
        with eio.atomic_open(tmp_path / "x", "a"):
            pass


def test_config_write_json_atomic_is_the_shared_one(tmp_path):
    from elmo.config import write_json_atomic

    assert write_json_atomic is eio.write_json_atomic


def test_check_output_refuses_inputs_through_links(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(src)
    os.link(src, tmp_path / "hard.txt")
    for out in (src, tmp_path / "link.txt", tmp_path / "hard.txt", tmp_path / "." / "in.txt"):
        with pytest.raises(eio.OutputPathError, match="is the input file .*in.txt"):
            eio.check_output(out, inputs=[None, src], force=True)  # --force never allows it
    other = tmp_path / "other.txt"
    other.write_text("x", encoding="utf-8")
    assert not eio.same_file(other, src)
    assert src.read_text(encoding="utf-8") == "hello\n"


def test_check_output_existing_folder_and_parent(tmp_path):
    out = tmp_path / "out.h5"
    assert eio.check_output(out) == str(out)
    out.write_bytes(b"mine")
    with pytest.raises(eio.OutputPathError, match=r"already exists; pass --force"):
        eio.check_output(out)
    with pytest.raises(eio.OutputPathError, match=r"pass --overwrite"):
        eio.check_output(out, force_flag="--overwrite")
    assert eio.check_output(out, force=True) == str(out)
    assert eio.check_output(out, allow_existing=True) == str(out)
    with pytest.raises(eio.OutputPathError, match="is a directory"):
        eio.check_output(tmp_path, force=True)
    with pytest.raises(eio.OutputPathError, match=r"the folder .*missing of output .* does not exist; create it"):
        eio.check_output(tmp_path / "missing" / "out.h5")
    assert eio.check_output(tmp_path / "new" / "deeper" / "o.h5", create_folder=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(eio.OutputPathError, match="does not exist"):  # a file is no folder
        eio.check_output(tmp_path / "file" / "o.h5", create_folder=True)
    with pytest.raises(eio.OutputPathError, match="empty"):
        eio.check_output("")
    assert out.read_bytes() == b"mine"


def test_clean_orphans_removes_only_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    names = [f"ckpt.pt.tmp.{dead_pid}", f"plot.png.tmp.{dead_pid}.png", f"a.json.tmp.{os.getpid()}",
             f"b.json.tmp.{os.getppid()}", "c.tmp.notapid", "keep.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    removed = eio.clean_orphans(tmp_path)
    assert removed == sorted(str(tmp_path / n) for n in names[:2])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert eio.clean_orphans(tmp_path, pattern="nothing*") == []


def test_disk_full_becomes_one_line_naming_path_and_free_space(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(b"old")
    with pytest.raises(eio.DiskFullError) as info:
        with eio.atomic_open(path, "wb") as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "free in" in msg and info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["big.bin"]
    # torch.save reports a full disk as "unexpected pos"; HDF5 as "errno = 28"
    for err in (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
                OSError("Can't write data (file write failed: errno = 28, error message = 'No space')")):
        with pytest.raises(eio.DiskFullError, match="no space left"):
            with eio.atomic_path(path):
                raise err
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through unchanged
        with eio.atomic_path(path):
            raise RuntimeError("unrelated")
    monkeypatch.setattr(eio, "free_bytes", lambda p: 1000)
    with pytest.raises(eio.DiskFullError, match=r"1000 B free .* \[2.0 KiB needed\]"):
        eio.ensure_free_space(path, 2048)
    eio.ensure_free_space(path, 999)


def test_format_bytes():
    assert [eio.format_bytes(n) for n in (0, 1023, 1024, 3 * 1024 ** 3, None)] == [
        "0 B", "1023 B", "1.0 KiB", "3.0 GiB", "unknown"]


def test_drop_byte_order_mark_removes_one_leading_mark_only():
    mark = "\ufeff"
    assert eio.drop_byte_order_mark(mark + "the cat\n") == "the cat\n"
    assert eio.drop_byte_order_mark(b"\xef\xbb\xbfthe cat\n") == b"the cat\n"
    assert eio.drop_byte_order_mark(mark + mark + "x") == mark + "x"  # as the utf-8-sig codec
    assert (mark + mark + "x").encode().decode("utf-8-sig") == mark + "x"
    for kept in ("the" + mark + "cat", " " + mark + "x", "", "plain"):
        assert eio.drop_byte_order_mark(kept) == kept
        assert eio.drop_byte_order_mark(kept.encode()) == kept.encode()
    assert eio.drop_byte_order_mark(b"\xef\xbb") == b"\xef\xbb"  # a cut-off mark is not one
