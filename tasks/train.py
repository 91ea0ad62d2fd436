"""Training loop for the task heads: Adam, gradient clipping, L2 on the scalar-mix weights, early
stopping on the dev metric with patience (counted once the metric has left its value after
epoch 1, so a slow start is not taken for convergence; a stall is logged), the best checkpoint
kept, metrics per epoch in JSON lines.

``train(model, task, cfg, ...)`` works for every head: a head has ``loss(batch)`` and
``predict(batch)``, and ``task`` is one of the modules ner / srl / classify (a ``tasks.task.Task``:
its ``decode`` and ``evaluate`` turn predictions into strings and scores).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from tasks.checkpoint import head_state, load_head_state
from tasks.config import TaskConfig
from tasks.data import BatchMaker, Symbols, num_batches
from tasks.readers import Instance
from tasks.task import Task

logger = logging.getLogger(__name__)


def predict(model: nn.Module, instances: Sequence[Instance], maker: BatchMaker, cfg: TaskConfig,
            desc: str = "predict") -> list:
    """Model outputs (tag id lists or label ids) for every instance, in the instances' order."""
    model.eval()
    device = torch.device(cfg.train.device)
    out: list = [None] * len(instances)
    batches = maker.batches(instances, cfg.train.batch_size, with_targets=False)
    with torch.no_grad():
        for batch in tqdm(batches, total=num_batches(len(instances), cfg.train.batch_size), desc=desc,
                          unit="batch", leave=False, disable=not cfg.train.progress):
            for i, p in zip(batch.index, model.predict(batch.to(device))):
                out[i] = p
    return out


def evaluate(model: nn.Module, task: Task, instances: Sequence[Instance], maker: BatchMaker,
             labels: Symbols, cfg: TaskConfig, desc: str = "evaluate") -> tuple[dict, list]:
    """(scores, predictions as strings) on gold ``instances``."""
    predictions = task.decode(predict(model, instances, maker, cfg, desc), labels, cfg)
    return task.evaluate(instances, predictions), predictions


def make_adam(params: list, lr: float) -> torch.optim.Optimizer:
    """Adam, as one fused kernel where this torch supports it for the parameters (CPU since
    torch 2.4, CUDA), a visible share of a cached NER step otherwise (docs/benchmarks.md). The
    update is the same as the per-tensor loop's, up to float rounding."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` with the multi-tensor (foreach) kernels where this torch has them
    for the parameters' device, the per-tensor loop otherwise (the same norm either way)."""
    try:
        return nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    except RuntimeError:
        return nn.utils.clip_grad_norm_(params, max_norm)


_STALL_REPORTS = {3, 5, 10, 20, 40, 80, 160}  # epochs at which a stall is reported (not every one)


def train(model: nn.Module, task: Task, cfg: TaskConfig, train_targets: Sequence[Instance],
          dev_data: Sequence[Instance], maker: BatchMaker, labels: Symbols, log_path: Optional[str] = None,
          on_best: Optional[Callable[[nn.Module, int, dict], None]] = None) -> dict:
    """Train ``model`` in place and leave it holding the best weights (by the dev metric).

    ``train_targets`` are the training instances with targets in the model's scheme
    (``task.targets``); ``dev_data`` keeps the data's own tags for scoring. ``on_best(model, epoch,
    scores)`` is called whenever the dev metric improves (the CLI saves the checkpoint there).
    Each epoch appends to ``log_path`` one JSON object: epoch, train_loss, train_seconds (the
    training pass), seconds (with the dev scoring), bilm_calls (biLM forward passes in the epoch,
    training and dev scoring; 0 with cached layers), dev_<metric>, the scalar-mix weights and
    gamma, whether it was the best so far, and ``stalled`` (the dev metric has not yet left its value
    after epoch 1; early stopping's patience is not counted then). Returns {"best_epoch",
    "best_dev_<metric>", "epochs"}.
    """
    device = torch.device(cfg.train.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adam(params, cfg.train.lr)
    rng = random.Random(cfg.train.seed)
    metric = task.METRIC
    best, best_epoch, best_state, bad_epochs = float("-inf"), 0, None, 0
    start_value, moved = None, False  # patience counts once the dev metric has left epoch 1's value
    bilm = getattr(model.encoder, "bilm", None)
    bilm_calls = [0]
    hook = bilm.register_forward_hook(lambda *_: bilm_calls.__setitem__(0, bilm_calls[0] + 1)) if bilm else None
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    epoch = 0
    try:
        for epoch in range(1, cfg.train.epochs + 1):
            started, calls_before = time.perf_counter(), bilm_calls[0]
            model.train()
            total, steps = 0.0, 0
            batches = maker.batches(train_targets, cfg.train.batch_size, shuffle=True, rng=rng)
            bar = tqdm(batches, total=num_batches(len(train_targets), cfg.train.batch_size),
                       desc=f"epoch {epoch}", unit="batch", leave=False, disable=not cfg.train.progress)
            for batch in bar:
                loss = model.loss(batch.to(device))
                if cfg.elmo.use and cfg.elmo.mix_l2 > 0:
                    loss = loss + cfg.elmo.mix_l2 * model.encoder.mix_penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip > 0:
                    clip_grad_norm(params, cfg.train.grad_clip)
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
                bar.set_postfix(loss=f"{total / steps:.4f}")
            train_seconds = time.perf_counter() - started
            scores, _ = evaluate(model, task, dev_data, maker, labels, cfg, desc="dev")
            record = {"epoch": epoch, "train_loss": total / max(steps, 1), "train_seconds": train_seconds,
                      "seconds": time.perf_counter() - started, "bilm_calls": bilm_calls[0] - calls_before,
                      f"dev_{metric}": scores[metric]}
            if model.encoder.scalar_mix is not None:
                record["mix_weights"] = model.encoder.scalar_mix.weights().tolist()
                record["mix_gamma"] = float(model.encoder.scalar_mix.gamma.detach())
            improved = scores[metric] > best
            if start_value is None:
                start_value = scores[metric]
            moved = moved or scores[metric] != start_value
            if improved:
                best, best_epoch, bad_epochs = scores[metric], epoch, 0
                best_state = head_state(model, include_bilm=cfg.elmo.fine_tune)
                if on_best is not None:
                    on_best(model, epoch, scores)
            elif moved:
                bad_epochs += 1
            record["best"] = improved
            record["stalled"] = not moved and epoch > 1
            logger.info("epoch %d: loss %.4f, dev %s %.2f%s (%.1f s)", epoch, record["train_loss"], metric,
                        scores[metric], " (best)" if improved else "", record["seconds"])
            if record["stalled"] and epoch in _STALL_REPORTS:
                logger.warning("epoch %d: dev %s is still %.2f, its value after epoch 1 (train loss %.4f): "
                               "training has stalled; early stopping waits until the metric moves "
                               "(more epochs, a higher lr or smaller batches may help)", epoch, metric,
                               start_value, record["train_loss"])
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bad_epochs >= cfg.train.patience:
                logger.info("no dev improvement for %d epochs: stopping early", bad_epochs)
                break
        if epoch > 1 and not moved:
            logger.warning("dev %s never left its value after epoch 1 (%.2f) in %d epochs: the model "
                           "did not learn; try more epochs, a higher lr or smaller batches", metric,
                           start_value, epoch)
    finally:
        if hook:
            hook.remove()
        if log:
            log.close()
    if best_state is not None:
        load_head_state(model, best_state)
    return {"best_epoch": best_epoch, f"best_dev_{metric}": best, "epochs": epoch}
