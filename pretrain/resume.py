"""What ``elmo-pretrain --resume`` may change, checked against the checkpoint before anything is written.

A checkpoint continues one run: the same model, data, softmax, optimizer and seed. The resumed
configuration (the run's ``pretrain_config.json`` plus this command's flags and ``--set``) is
compared with the configuration stored in the latest checkpoint, field by field:

- ``RESUMABLE`` fields may change; they only steer the rest of the run: the budget
  (``train.max_tokens`` / ``max_steps`` / ``epochs``), the evaluation, logging and checkpoint
  intervals, the number of kept checkpoints, threads, device, ``torch.compile`` and the progress
  bar.
- ``optim.lr`` may change and is applied: from the resumed step on, the schedule's factor
  multiplies the new base rate (logged as ``optim.lr 0.2 -> 0.1``).
- Every other field is refused with one message naming each field with its checkpoint and new
  value (changing them would resume a different run, or fail later with a size mismatch).

The training and held-out inputs are recorded in every checkpoint (resolved paths and sizes); a
resume on other text, or on a file that changed since, is refused, because the checkpoint's data
position belongs to the text it was written with. Train on other text with ``--init RUN_DIR``
into a new ``--out`` instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from pretrain.config import PretrainConfig

logger = logging.getLogger(__name__)

RESUMABLE = frozenset({
    "train.max_tokens", "train.max_steps", "train.epochs",
    "train.eval_every", "train.eval_at_start", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.threads", "train.device", "train.compile", "train.progress",
})
APPLIED_ON_RESUME = frozenset({"optim.lr"})


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(config: PretrainConfig, checkpoint_config: dict) -> dict:
    """Fields whose value differs from the checkpoint's: {field: (checkpoint value, new value)}.

    The checkpoint's dictionary is read through ``PretrainConfig`` so that a field added to the
    config after the checkpoint was written compares as its default."""
    saved = flatten(PretrainConfig.from_dict(checkpoint_config).to_dict())
    new = flatten(config.to_dict())
    return {k: (saved.get(k), new.get(k)) for k in sorted(set(saved) | set(new))
            if saved.get(k) != new.get(k)}


def check_config(config: PretrainConfig, checkpoint: dict, out_dir: str = "RUN_DIR") -> dict:
    """Raise ``ValueError`` naming every field that may not change on resume; return the changes
    that may ({field: (old, new)})."""
    try:
        changes = config_changes(config, checkpoint["config"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{checkpoint.get('path', 'the checkpoint')}: its configuration cannot be "
                         f"read ({e}); resume with the elmo-pretrain version that wrote it") from None
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE | APPLIED_ON_RESUME}
    if refused:
        listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now"
                           for k, (old, new) in refused.items())
        raise ValueError(
            f"--resume cannot change {', '.join(refused)} ({listed}); the run continues with its "
            f"checkpoint's settings, and only the budget, intervals, threads, device, progress and "
            f"optim.lr may change. Drop these overrides (or pass --set FIELD=<checkpoint value>), or "
            f"start a new run from this one with --init {out_dir} --out NEW_DIR")
    return changes


def describe_inputs(specs: Optional[Sequence[str]]) -> Optional[list]:
    """Resolved input files as [absolute path, size in bytes]; a hub name as [name, None]."""
    if not specs:
        return None
    from pretrain.corpus import resolve_files

    out = []
    for spec in specs:
        try:
            files = resolve_files([spec])
        except (FileNotFoundError, ValueError):
            out.append([spec, None])
            continue
        out.extend([os.path.abspath(f), os.path.getsize(f)] for f in files)
    return out


def check_inputs(recorded: Optional[dict], train: Sequence[str], heldout: Optional[Sequence[str]],
                 path: str = "the checkpoint") -> None:
    """Refuse a resume on other (or changed) training or held-out text than the checkpoint's."""
    if not recorded:  # a checkpoint of an older version: nothing to compare with
        logger.warning("%s records no inputs; cannot check that --train is the same text", path)
        return
    for flag, specs in (("--train", train), ("--heldout", heldout)):
        then, now = recorded.get(flag[2:]), describe_inputs(specs)
        if then == now:
            continue
        then_files = [f for f, _ in then or []]
        now_files = [f for f, _ in now or []]
        if then_files == now_files:
            changed = [f"{f} ({a} -> {b} bytes)" for (f, a), (_, b) in zip(then, now) if a != b]
            raise ValueError(f"--resume: {', '.join(changed)} changed since {path} was written; the "
                             "checkpoint's position in the data belongs to the old text. Restore it, "
                             "or train on the new text with --init RUN_DIR --out NEW_DIR")
        raise ValueError(f"--resume {flag}: the run was trained on {then_files or 'nothing'} but this "
                         f"command gives {now_files or 'nothing'}; the checkpoint's position in the "
                         f"data belongs to that text. Resume with the same {flag}, or train on other "
                         "text with --init RUN_DIR --out NEW_DIR")


def log_changes(changes: dict, step: int) -> None:
    for name, (old, new) in changes.items():
        logger.info("--resume at step %d: %s %r -> %r%s", step, name, old, new,
                    " (applied from this step on)" if name in APPLIED_ON_RESUME else "")


def apply_learning_rate(optimizer: Any, scheduler: Any, lr: float) -> None:
    """Make ``lr`` the base rate of a resumed run: the loaded schedule keeps its factor for the
    current step, scaled to the new base (LambdaLR keeps the base in ``base_lrs``)."""
    old = list(scheduler.base_lrs)
    scheduler.base_lrs = [lr for _ in old]
    for group, base in zip(optimizer.param_groups, old):
        factor = group["lr"] / base if base else 1.0
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
