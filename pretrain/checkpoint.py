"""Training checkpoints: atomic files ``DIR/checkpoints/step-NNNNNNNNN.pt``, the last K kept.

A checkpoint is a dictionary of state_dicts and plain values (loadable with
``torch.load(weights_only=True)``): the LM (biLM + softmax), optimizer, learning-rate schedule,
loss scaler, step and token counters, the resolved config, and per process the position in the
data, the carried LSTM state and the RNG state. It is written to a temporary name and renamed, so
the newest ``step-*.pt`` is always complete (the temporary files of a killed run are removed at the
next start: ``clean_run_dir``); a checkpoint that still fails to load (a damaged disk)
is skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Optional

import torch

from elmo.io import atomic_open, clean_orphans

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, CHECKPOINT_DIR, f"step-{step:09d}.pt")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run as (step, path), oldest first (temporary files excluded)."""
    found = []
    for path in glob.glob(os.path.join(out_dir, CHECKPOINT_DIR, "step-*.pt")):
        m = _NAME.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def save_checkpoint(data: dict, out_dir: str, step: int, keep: int) -> str:
    """Write atomically, then delete all but the newest ``keep`` checkpoints."""
    path = checkpoint_path(out_dir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # PATH.tmp.PID, fsync, rename; a full disk (torch's "unexpected pos") is a DiskFullError
    # naming the path and the free space, and the previous checkpoints stay as they were.
    with atomic_open(path, "wb") as f:
        torch.save(data, f)
    for _, old in list_checkpoints(out_dir)[:-keep]:
        os.remove(old)
    return path


def clean_run_dir(out_dir: str) -> list:
    """Remove the temporary files (``*.tmp.PID``) that a killed run or a full disk left in the
    run directory and its checkpoint folder; returns them (logged)."""
    removed = []
    for folder in (out_dir, os.path.join(out_dir, CHECKPOINT_DIR)):
        if os.path.isdir(folder):
            removed += clean_orphans(folder)
    for path in removed:
        logger.info("removed %s (a temporary file of an interrupted run)", path)
    return removed


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ValueError(f"{path}: not a checkpoint of elmo-pretrain (format 1)")
    return data


def load_latest(out_dir: str, map_location: str | torch.device = "cpu") -> Optional[dict]:
    """The newest checkpoint of ``out_dir`` that loads, or None when there is none."""
    for step, path in reversed(list_checkpoints(out_dir)):
        try:
            data = load_checkpoint(path, map_location)
        except Exception as e:  # a damaged file: fall back to the previous checkpoint
            logger.warning("%s: cannot be loaded (%s: %s); trying the previous checkpoint",
                           path, type(e).__name__, e)
            continue
        data["path"] = path
        return data
    return None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
