import logging
import os

import pytest
import torch

from pretrain import checkpoint as ckpt


def data(step):
    return {"format": 1, "step": step, "model": {"w": torch.full((3,), float(step))}}


def test_keeps_the_last_k_complete_checkpoints(tmp_path):
    for step in (1, 2, 3, 4, 5):
        ckpt.save_checkpoint(data(step), str(tmp_path), step, keep=3)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [3, 4, 5]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "step-000000003.pt", "step-000000004.pt", "step-000000005.pt"]
    latest = ckpt.load_latest(str(tmp_path))
    assert latest["step"] == 5 and torch.equal(latest["model"]["w"], torch.full((3,), 5.0))


def test_a_failed_write_never_becomes_the_latest(tmp_path, monkeypatch):
    ckpt.save_checkpoint(data(1), str(tmp_path), 1, keep=3)
    real_save = torch.save

    def crash_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # bytes on disk, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(data(2), str(tmp_path), 2, keep=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path / "checkpoints") == ["step-000000001.pt"]  # no temporary file left
    assert ckpt.load_latest(str(tmp_path))["step"] == 1
    # A leftover temporary file from a killed process is never taken for a checkpoint.
    (tmp_path / "checkpoints" / "step-000000009.pt.tmp.123").write_bytes(b"junk")
    assert ckpt.load_latest(str(tmp_path))["step"] == 1


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    ckpt.save_checkpoint(data(1), str(tmp_path), 1, keep=3)
    path = ckpt.save_checkpoint(data(2), str(tmp_path), 2, keep=3)
    with open(path, "r+b") as f:
        f.truncate(40)
    with caplog.at_level(logging.WARNING):
        latest = ckpt.load_latest(str(tmp_path))
    assert latest["step"] == 1 and "cannot be loaded" in caplog.text
    assert ckpt.load_latest(str(tmp_path / "nothing")) is None


def test_foreign_files_are_rejected(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"step": 3}, path)
    with pytest.raises(ValueError, match="not a checkpoint of elmo-pretrain"):
        ckpt.load_checkpoint(str(path))
