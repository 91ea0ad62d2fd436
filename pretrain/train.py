"""The training loop: ``Trainer(lm, batcher, config, ...).fit()``.

One step: next batch -> forward (autocast when asked) -> loss = mean of the forward and backward
losses (per row: summed over its positions, as bilm-tf's ``loss * unroll_steps``; or per token)
-> backward (loss-scaled for fp16) -> clip by value and by global L2 norm ->
optimizer and learning-rate schedule. In window mode the final LSTM state of every row is
detached and fed to the same row of the next batch (truncated back-propagation through time).

Under DDP every process normalises its loss sums by the row or token counts of all processes
(one all-reduce of a few numbers), so the averaged gradients equal those of one process holding the
combined batch. Held-out evaluation (full softmax, per direction) runs on rank 0, which also
writes metrics, checkpoints and the model.

Ctrl-C (SIGINT) is deferred to the end of the current step; the trainer then saves a checkpoint
and returns. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from typing import Callable, Optional

import torch
from torch import nn

from elmo.bilm import detach_state, map_state
from pretrain import checkpoint as ckpt
from pretrain.config import OptimConfig, PretrainConfig
from pretrain.distributed import DistInfo, all_reduce_sum, gather_objects
from pretrain.lm import BidirectionalLM, evaluate

logger = logging.getLogger(__name__)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   initial_accumulator_value=cfg.adagrad_initial_accumulator)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: adagrad, adam")


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): warm-up, then the schedule."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class MetricsLog:
    """JSON lines, appended and flushed (rank 0 only)."""

    def __init__(self, path: Optional[str], resume_step: Optional[int] = None) -> None:
        self.path = path
        if path and resume_step is not None and os.path.exists(path):
            # Drop what was logged after the checkpoint we resume from: it will be logged again.
            with open(path, encoding="utf-8") as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = f"{path}.tmp.{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(keep)
            os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class Trainer:
    def __init__(self, lm: BidirectionalLM, batcher, config: PretrainConfig, total_steps: int,
                 out_dir: Optional[str] = None, info: Optional[DistInfo] = None,
                 heldout=None, callback: Optional[Callable] = None) -> None:
        self.lm, self.batcher, self.config = lm, batcher, config
        self.total_steps, self.out_dir = total_steps, out_dir
        self.info = info or DistInfo()
        self.heldout, self.callback = heldout, callback
        self.device = self.info.device
        lm.to(self.device)
        self.model = lm
        if self.info.active:
            # The adaptive softmax leaves tail clusters without gradient in some batches.
            self.model = nn.parallel.DistributedDataParallel(
                lm, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=lm.softmax.kind == "adaptive")
        opt = config.optim
        self.optimizer = build_optimizer(lm.parameters(), opt)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, opt, total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.precision == "fp16")
        self.step, self.tokens = 0, 0
        self.state = None  # carried LSTM state (window mode)
        self.window_mode = config.data.batch_mode == "window"
        self.stop_requested = False  # this process was asked to stop (Ctrl-C, callback)
        self.stop_agreed = False  # some process was asked, as of the last step: all stop together
        self.last_eval: Optional[dict] = None
        self.on_checkpoint: Optional[Callable] = None  # e.g. refresh the model files (rank 0)
        self.extra_state: dict = {}  # plain values stored in every checkpoint (run.py: the inputs)
        self.metrics = MetricsLog(os.path.join(out_dir, "metrics.jsonl")
                                  if out_dir and self.info.is_main else None)

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, batch) -> dict:
        cfg = self.config
        self.lm.train()
        batch = batch.to(self.device)
        # Negatives of the sampled softmax: a function of (seed, step), the same on every process.
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step)
        with autocast(self.device, cfg.train.precision):
            out = self.model(batch, self.state, cfg.optim.dropout, generator)
        totals = torch.stack([out.forward_loss_sum.detach().float(), out.backward_loss_sum.detach().float(),
                              out.forward_count.float(), out.backward_count.float(),
                              batch.mask.sum().float(),
                              torch.tensor(float(self.stop_requested), device=self.device),
                              torch.tensor(float(batch.tokens.shape[0]), device=self.device)]).double()
        totals = all_reduce_sum(totals, self.info)  # sums and counts of all processes, stop votes
        self.stop_agreed = bool(totals[5] > 0)
        if cfg.optim.loss_normalization == "row":  # per-row sums, averaged over all rows
            nf = nb = totals[6].float()
        else:  # per-token means
            nf, nb = totals[2].clamp(min=1).float(), totals[3].clamp(min=1).float()
        loss = 0.5 * (out.forward_loss_sum / nf + out.backward_loss_sum / nb) * self.info.world
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.lm.parameters() if p.grad is not None]
        if cfg.optim.clip_value is not None:
            nn.utils.clip_grad_value_(params, cfg.optim.clip_value)
        max_norm = cfg.optim.clip_norm if cfg.optim.clip_norm is not None else float("inf")
        grad_norm = float(nn.utils.clip_grad_norm_(params, max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = detach_state(out.state) if self.window_mode else None
        self.step += 1
        self.tokens += int(totals[4])
        fwd, bwd = float(totals[0] / totals[2].clamp(min=1)), float(totals[1] / totals[3].clamp(min=1))
        return {"step": self.step, "tokens": self.tokens, "loss": 0.5 * (fwd + bwd),
                "forward_loss": fwd, "backward_loss": bwd, "lr": lr, "grad_norm": grad_norm,
                "batch_tokens": int(totals[4])}

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_data(self) -> dict:
        carried = map_state(lambda x: x.cpu(), self.state) if self.state is not None else None
        mine = {"data": self.batcher.state_dict(), "carried": carried, "rng": ckpt.rng_state()}
        ranks = gather_objects(mine, self.info)
        return {"format": 1, "step": self.step, "tokens": self.tokens,
                "config": self.config.to_dict(), "model": self.lm.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "ranks": ranks,
                **self.extra_state}

    def save_checkpoint(self) -> Optional[str]:
        data = self.checkpoint_data()  # every rank takes part in the gather
        if not (self.out_dir and self.info.is_main):
            return None
        path = ckpt.save_checkpoint(data, self.out_dir, self.step, self.config.train.keep_checkpoints)
        logger.info("checkpoint %s", path)
        if self.on_checkpoint is not None:
            self.on_checkpoint()
        return path

    def load_checkpoint(self, data: dict) -> None:
        if len(data["ranks"]) != self.info.world:
            raise ValueError(f"the checkpoint was written by {len(data['ranks'])} process(es); resume "
                             f"with the same number (this run has {self.info.world})")
        self.lm.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        self.step, self.tokens = int(data["step"]), int(data["tokens"])
        mine = data["ranks"][self.info.rank]
        self.batcher.load_state_dict(mine["data"])
        self.state = map_state(lambda x: x.to(self.device), mine["carried"]) \
            if mine["carried"] is not None else None
        ckpt.set_rng_state(mine["rng"])
        self.metrics = MetricsLog(self.metrics.path, resume_step=self.step)

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, max_batches: Optional[int] = None) -> Optional[dict]:
        if not self.heldout or not self.info.is_main:
            return None
        result = evaluate(self.lm, self.heldout, max_batches)
        self.last_eval = result
        self.metrics.write({"step": self.step, "tokens": self.tokens,
                            **{f"heldout_{k}": v for k, v in result.items()}})
        logger.info("step %d held-out perplexity: forward %.2f, backward %.2f (%d tokens)", self.step,
                    result["forward_ppl"], result["backward_ppl"], result["tokens"])
        return result

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> bool:
        """Train until ``total_steps``; True when finished, False when stopped early (Ctrl-C)."""
        tc = self.config.train
        # Defaults: 4 held-out evaluations before the final one, 10 checkpoints.
        eval_every = tc.eval_every or max(1, self.total_steps // 5)
        ckpt_every = tc.checkpoint_every or max(1, self.total_steps // 10)
        if self.step == 0 and tc.eval_at_start:
            self.evaluate()  # the curve's starting point
        previous = _defer_sigint(self)
        bar = _progress(self.total_steps, self.step, tc.progress and self.info.is_main)
        t_log, tok_log, losses = time.perf_counter(), self.tokens, []
        try:
            with _logging_through(bar):
                while self.step < self.total_steps and not self._should_stop():
                    metrics = self.train_step(self.batcher.next_batch())
                    losses.append(metrics["loss"])
                    if not math.isfinite(metrics["loss"]):
                        raise FloatingPointError(f"step {self.step}: the loss is {metrics['loss']}; "
                                                 "lower optim.lr or use gradient clipping")
                    if self.callback is not None and self.callback(self, metrics):
                        self.stop_requested = True
                    if self.step % tc.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        record = {**metrics, "loss_mean": sum(losses) / len(losses),
                                  "tokens_per_s": (self.tokens - tok_log) / max(now - t_log, 1e-9)}
                        self.metrics.write(record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss_mean']:.3f}",
                                            tok_s=f"{record['tokens_per_s']:.0f}")
                        t_log, tok_log, losses = now, self.tokens, []
                    if bar is not None:
                        bar.update(1)
                    if self.step % eval_every == 0 and self.step < self.total_steps:
                        self.evaluate()
                    if self.step % ckpt_every == 0 and self.step < self.total_steps:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        stopped = self.step < self.total_steps
        if stopped:
            logger.info("stopped at step %d; saving a checkpoint (resume with --resume)", self.step)
        self.save_checkpoint()
        return not stopped

    def _should_stop(self) -> bool:
        # One process decides at once; several decide together at the next all-reduce.
        return self.stop_agreed or (self.stop_requested and not self.info.active)


def _defer_sigint(trainer: Trainer):
    """Make the first Ctrl-C request a stop at the end of the step; the second one interrupts."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        logger.warning("Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        return None


def _logging_through(bar):
    """Log lines printed above the progress bar instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
