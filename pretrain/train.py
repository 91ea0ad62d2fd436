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

No host synchronisation inside a step (what keeps a GPU's queue full): the next batch is built on
the host while the device works on the current one and copied from pinned memory without
blocking (``DevicePrefetcher``); the sampled softmax draws its negatives on the device; losses,
token counts and the gradient norm stay device tensors (``StepMetrics``) and are read at logging,
evaluation and checkpoint steps only; the optimizers are the fused kernels where torch has them;
clipping returns a tensor nobody branches on. A non-finite loss or gradient norm sets a device
flag: with ``sync_every_step`` (the default on CPU, where reading it costs nothing) the trainer
reads it before the update and raises ``NonFiniteError`` at once; otherwise the fused optimizer
skips that update on the device (weights stay finite) and the error is raised at the next read
(log interval, evaluation, checkpoint). A checkpoint is never written after a non-finite step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from typing import Callable, Optional

import torch
from torch import nn

from elmo.bilm import detach_state, map_state
from elmo.io import atomic_open
from pretrain import checkpoint as ckpt
from pretrain.config import OptimConfig, PretrainConfig
from pretrain.recipe import Plateau
from pretrain.distributed import DistInfo, all_reduce_sum, gather_objects
from pretrain.lm import BidirectionalLM, describe_perplexities, evaluate

logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A training step's loss or gradient norm was not finite (``step``: its 1-based number)."""

    def __init__(self, step: int, loss: float, grad_norm: float) -> None:
        super().__init__(f"step {step}: the loss is {loss} (gradient norm {grad_norm}); the update "
                         "was not applied. Lower optim.lr or use gradient clipping")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def fused_kwargs(params) -> dict:
    """``fused=True`` where torch has a fused optimizer kernel for these parameters (CPU and CUDA,
    floating point): one kernel per step instead of a few per tensor, and an update the
    ``found_inf`` flag can skip on the device."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    ok = params and all(p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices()
                        for p in params) and len({p.device for p in params}) == 1
    return {"fused": True} if ok else {}


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   initial_accumulator_value=cfg.adagrad_initial_accumulator,
                                   **fused_kwargs(params))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                weight_decay=cfg.weight_decay, **fused_kwargs(params))
    if cfg.optimizer == "sgd":  # plain SGD, no momentum (Zaremba et al. 2014, Kim et al. 2016)
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: adagrad, adam, sgd")


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): warm-up, then the schedule
    (``plateau`` is constant here; the trainer multiplies in its ``Plateau`` scale)."""
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


class StepMetrics(Mapping):
    """One step's metrics: host numbers plus device tensors that are read (one synchronisation
    for all of them) the first time any of them is looked up."""

    DEVICE_KEYS = ("forward_loss", "backward_loss", "grad_norm", "batch_tokens", "loss")

    def __init__(self, host: dict, device: torch.Tensor) -> None:
        self._host, self._device, self._values = host, device, None  # device: (5,) float64

    def _read(self) -> dict:
        if self._values is None:
            fwd, bwd, norm, tokens, loss = self._device.tolist()
            self._values = {"loss": loss, "forward_loss": fwd, "backward_loss": bwd,
                            "grad_norm": norm, "batch_tokens": int(tokens)}
        return self._values

    def __getitem__(self, key):
        if key == "tokens":  # the run's total so far (another read)
            return self._host["tokens"]()
        if key in self._host:
            return self._host[key]
        return self._read()[key]

    def __iter__(self):
        return iter((*self._host, *self.DEVICE_KEYS))

    def __len__(self) -> int:
        return len(self._host) + len(self.DEVICE_KEYS)


class DevicePrefetcher:
    """Batches of ``batcher`` built on the host and sent to ``device`` one step ahead: pinned
    memory and non-blocking copies on CUDA (on CPU the same calls, without pinning, are free).
    ``fetch()`` starts the copy of the next batch; ``next_batch()`` returns it (fetching first if
    nothing is pending). The trainer fetches only when it will run the step (after its checkpoint
    decision), so the batcher's position in a checkpoint never counts a batch not trained on."""

    def __init__(self, batcher, device: torch.device) -> None:
        self.batcher, self.device, self.pending = batcher, device, None
        self.pin = device.type == "cuda"

    def fetch(self) -> None:
        if self.pending is None:
            batch = self.batcher.next_batch()
            if self.pin:
                batch = type(batch)(*(t.pin_memory() for t in batch))
            self.pending = batch.to(self.device)  # non_blocking (Batch.to)

    def next_batch(self):
        self.fetch()
        batch, self.pending = self.pending, None
        return batch


class MetricsLog:
    """JSON lines, appended and flushed (rank 0 only)."""

    def __init__(self, path: Optional[str], resume_step: Optional[int] = None) -> None:
        self.path = path
        if path and resume_step is not None and os.path.exists(path):
            # Drop what was logged after the checkpoint we resume from: it will be logged again.
            with open(path, encoding="utf-8") as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with atomic_open(path, "w") as f:
                f.writelines(keep)

    def write(self, record: dict) -> None:
        """One line of strict JSON: a float that is not finite (the perplexity of a direction
        that was not trained) is written as null."""
        if self.path:
            clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                     for k, v in record.items()}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(clean, allow_nan=False) + "\n")


class Trainer:
    def __init__(self, lm: BidirectionalLM, batcher, config: PretrainConfig, total_steps: int,
                 out_dir: Optional[str] = None, info: Optional[DistInfo] = None,
                 heldout=None, callback: Optional[Callable] = None,
                 steps_per_epoch: Optional[int] = None) -> None:
        self.lm, self.batcher, self.config = lm, batcher, config
        self.steps_per_epoch = steps_per_epoch  # for train.eval_per_epoch
        self.total_steps, self.out_dir = total_steps, out_dir
        self.info = info or DistInfo()
        self.heldout, self.callback = heldout, callback
        self.device = self.info.device
        lm.to(self.device)
        self.model = lm
        if self.info.active:
            # The adaptive softmax leaves tail clusters without gradient in some batches; one
            # direction alone (train.directions) leaves the other stack without gradient.
            self.model = nn.parallel.DistributedDataParallel(
                lm, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=lm.softmax.kind == "adaptive" or config.train.directions != "both")
        # train.compile: the forward (and with it the backward) through torch.compile; the
        # sampled softmax's negatives are drawn outside and given to it as an input.
        self.step_model = torch.compile(self.model) if config.train.compile else self.model
        opt = config.optim
        self.optimizer = build_optimizer(lm.parameters(), opt)
        self.plateau = Plateau(opt.plateau_threshold, opt.plateau_factor)  # schedule "plateau"
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, opt, total_steps) * self.plateau.scale)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.precision == "fp16")
        # Read the finite flag (and, under DDP, the stop vote) after every step: free on a CPU;
        # on a GPU they are read at log, evaluation and checkpoint steps only.
        self.sync_every_step = self.device.type == "cpu"
        if self.device.type == "cuda" and config.train.precision != "fp32":
            # The LSTM recurrence stays in float32 under autocast: let it use TF32 tensor cores
            # (a reduced-precision run anyway; fp32 runs keep full float32 products).
            torch.set_float32_matmul_precision("high")
        self._token_total = torch.zeros((), dtype=torch.float64, device=self.device)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite
        self._interval_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._generator = torch.Generator(self.device)  # the sampled softmax's negatives
        self.step = 0
        self.state = None  # carried LSTM state (window mode)
        self.window_mode = config.data.batch_mode == "window"
        self.stop_requested = False  # this process was asked to stop (Ctrl-C, callback)
        self.stop_agreed = False  # some process was asked, as of the last step: all stop together
        self.last_eval: Optional[dict] = None
        self.on_checkpoint: Optional[Callable] = None  # e.g. refresh the model files (rank 0)
        self.extra_state: dict = {}  # plain values stored in every checkpoint (run.py: the inputs)
        self.metrics = MetricsLog(os.path.join(out_dir, "metrics.jsonl")
                                  if out_dir and self.info.is_main else None)

    @property
    def tokens(self) -> int:
        """Training tokens seen so far (all processes); reading it synchronises with the device."""
        return int(self._token_total)

    @tokens.setter
    def tokens(self, value: int) -> None:
        self._token_total.fill_(float(value))

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, batch) -> StepMetrics:
        """One update on ``batch`` (host or device tensors). Returns its metrics; nothing in the
        step waits for the device unless ``sync_every_step`` (reading the metrics does)."""
        cfg = self.config
        self.lm.train()
        batch = batch.to(self.device)
        # Negatives of the sampled softmax: a function of (seed, step), the same on every process,
        # drawn on the device.
        generator = self._generator.manual_seed(cfg.train.seed * 1_000_003 + self.step)
        with autocast(self.device, cfg.train.precision):
            negatives = generator
            if cfg.train.compile:  # one graph for every count of distinct tokens; negatives as input
                torch._dynamo.maybe_mark_dynamic(batch.token_chars, 0)
                if self.lm.softmax.kind == "sampled":
                    negatives = self.lm.softmax.draw(generator, self.device)
            out = self.step_model(batch, self.state, cfg.optim.dropout, negatives, self.window_mode,
                                  cfg.train.directions, cfg.optim.input_dropout)
        zero = self._token_total.new_zeros(())
        totals = torch.stack([out.forward_loss_sum.detach().double(), out.backward_loss_sum.detach().double(),
                              out.forward_count.double(), out.backward_count.double(),
                              batch.mask.sum().double(), zero + float(self.stop_requested),
                              zero + float(batch.tokens.shape[0])])
        totals = all_reduce_sum(totals, self.info)  # sums and counts of all processes, stop votes
        if cfg.optim.loss_normalization == "row":  # per-row sums, averaged over all rows
            nf = nb = totals[6].float()
        else:  # per-token means
            nf, nb = totals[2].clamp(min=1).float(), totals[3].clamp(min=1).float()
        if cfg.train.directions == "forward":  # the forward LM alone (Kim et al. 2016)
            loss = out.forward_loss_sum / nf * self.info.world
        else:
            loss = 0.5 * (out.forward_loss_sum / nf + out.backward_loss_sum / nb) * self.info.world
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.lm.parameters() if p.grad is not None]
        if cfg.optim.clip_value is not None:
            nn.utils.clip_grad_value_(params, cfg.optim.clip_value)
        max_norm = cfg.optim.clip_norm if cfg.optim.clip_norm is not None else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)  # a tensor: not read here
        fwd = totals[0] / totals[2].clamp(min=1)
        bwd = totals[1] / totals[3].clamp(min=1)
        mean_loss = 0.5 * (fwd + bwd) if cfg.train.directions == "both" else fwd
        device_metrics = torch.stack([fwd, bwd, grad_norm.double(), totals[4], mean_loss])
        # fp16: infinite gradients are the loss scaler's business (it skips and lowers the scale).
        finite = torch.isfinite(mean_loss) if self.scaler.is_enabled() else \
            torch.isfinite(mean_loss) & torch.isfinite(grad_norm)
        if self.sync_every_step or self.info.active and (self.step + 1) % cfg.train.log_every == 0:
            self.stop_agreed = bool(totals[5] > 0)
        if self.sync_every_step:
            if not bool(finite):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(self.step + 1, float(mean_loss), float(grad_norm))
        else:
            self._bad_step = torch.where(finite | (self._bad_step >= 0), self._bad_step,
                                         self._bad_step.new_full((), self.step + 1))
            if self.optimizer.defaults.get("fused") and not self.scaler.is_enabled():
                self.optimizer.found_inf = (~finite).float()  # the fused kernel skips the update
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used (plateau: set directly)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = detach_state(out.state) if self.window_mode else None
        self.step += 1
        self._token_total += totals[4]
        self._interval_loss += mean_loss
        return StepMetrics({"step": self.step, "lr": lr, "tokens": lambda: self.tokens},
                           device_metrics)

    def check_finite(self, weights: bool = True) -> None:
        """Raise ``NonFiniteError`` if a step so far had a non-finite loss or gradient norm (one
        read of a device flag), or, with ``weights``, the weights are not finite (one pass over
        them: before a checkpoint)."""
        bad = int(self._bad_step)
        if bad >= 0:
            raise NonFiniteError(bad, float("nan"), float("nan"))
        if not weights:
            return
        flags = torch.stack([torch.isfinite(p).all() for p in self.lm.parameters()])
        if not bool(flags.all()):
            raise NonFiniteError(self.step, float("nan"), float("nan"))

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_data(self) -> dict:
        carried = map_state(lambda x: x.cpu(), self.state) if self.state is not None else None
        mine = {"data": self.batcher.state_dict(), "carried": carried, "rng": ckpt.rng_state()}
        ranks = gather_objects(mine, self.info)
        return {"format": 1, "step": self.step, "tokens": self.tokens,
                "config": self.config.to_dict(), "model": self.lm.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "plateau": self.plateau.state_dict(), "ranks": ranks,
                **self.extra_state}

    def save_checkpoint(self) -> Optional[str]:
        self.check_finite()  # never a checkpoint (or model) of a diverged run
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
        if "plateau" in data:
            self.plateau.load_state_dict(data["plateau"])
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
        # A callable held-out set evaluates the model itself (pretrain.evaluate.StreamEvaluator).
        result = self.heldout(self.lm) if callable(self.heldout) else \
            evaluate(self.lm, self.heldout, max_batches, self.config.train.directions)
        self.last_eval = result
        self.metrics.write({"step": self.step, "tokens": self.tokens,
                            **{f"heldout_{k}": v for k, v in result.items()}})
        logger.info("step %d held-out perplexity: %s (%d tokens)", self.step,
                    describe_perplexities(result["forward_ppl"], result["backward_ppl"]), result["tokens"])
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
        previous = _defer_stop_signals(self)
        bar = _progress(self.total_steps, self.step, tc.progress and self.info.is_main)
        t_log, tok_log, n_losses = time.perf_counter(), self.tokens, 0
        self._interval_loss.zero_()
        # The next batch is fetched (and its copy to the device started) while the device still
        # works on the current step, but only once this step's checkpoint and stop decisions are
        # made: the data position saved in a checkpoint never counts a batch that was not trained on.
        feed = DevicePrefetcher(self.batcher, self.device)
        try:
            with _logging_through(bar):
                while self.step < self.total_steps:
                    if feed.pending is None and self._should_stop():
                        break
                    metrics = self.train_step(feed.next_batch())
                    n_losses += 1
                    if self.callback is not None and self.callback(self, metrics):
                        self.stop_requested = True
                    if self.step % tc.log_every == 0 or self.step == self.total_steps:
                        self.check_finite(weights=False)
                        now = time.perf_counter()
                        tokens = self.tokens
                        record = {**metrics, "loss_mean": float(self._interval_loss) / n_losses,
                                  "tokens_per_s": (tokens - tok_log) / max(now - t_log, 1e-9)}
                        self.metrics.write(record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss_mean']:.3f}",
                                            tok_s=f"{record['tokens_per_s']:.0f}")
                        t_log, tok_log, n_losses = now, tokens, 0
                        self._interval_loss.zero_()
                    if bar is not None:
                        bar.update(1)
                    epoch_end = bool(tc.eval_per_epoch and self.steps_per_epoch
                                     and self.step % self.steps_per_epoch == 0
                                     and self.step < self.total_steps)  # the last: run.py's
                    if epoch_end:
                        self.end_epoch()  # held-out evaluation; the plateau schedule
                    elif self.step % eval_every == 0 and self.step < self.total_steps:
                        self.evaluate()
                    if (epoch_end or self.step % ckpt_every == 0) and self.step < self.total_steps:
                        self.save_checkpoint()
                    if self.step < self.total_steps and not self._should_stop():
                        feed.fetch()
        finally:
            if bar is not None:
                bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        stopped = self.step < self.total_steps
        if stopped:
            logger.info("stopped at step %d; saving a checkpoint (resume with --resume)", self.step)
        self.save_checkpoint()
        return not stopped

    def end_epoch(self) -> None:
        """The held-out evaluation at the end of an epoch; it drives the ``plateau`` schedule."""
        result = self.evaluate()  # rank 0 only
        if self.config.optim.schedule != "plateau":
            return
        # Every process takes rank 0's perplexity, so all of them change the rate together.
        ppl = torch.tensor([result["forward_ppl"] if result else 0.0], dtype=torch.float64,
                           device=self.device)
        ppl = float(all_reduce_sum(ppl, self.info)[0])
        if self.plateau.update(ppl):
            logger.info("epoch %d: held-out perplexity %.2f improved by less than %g: learning rate "
                        "x %g", self.step // self.steps_per_epoch, ppl,
                        self.plateau.threshold, self.plateau.factor)
        lr = self.config.optim.lr * lr_factor(self.step, self.config.optim, self.total_steps) * \
            self.plateau.scale
        for group in self.optimizer.param_groups:  # the next step already uses the new rate
            group["lr"] = lr
        self.metrics.write({"step": self.step, "tokens": self.tokens, "epoch": self.step // self.steps_per_epoch,
                            "lr_next": lr})

    def _should_stop(self) -> bool:
        # One process decides at once; several decide together at the next all-reduce.
        return self.stop_agreed or (self.stop_requested and not self.info.active)


def _defer_stop_signals(trainer: Trainer) -> dict:
    """Make the first Ctrl-C (SIGINT) or SIGTERM (what schedulers such as SLURM send before they kill
    a job) request a stop at the end of the step; a second one interrupts. Returns the handlers
    replaced, for ``fit`` to put back."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        logger.warning("%s: finishing this step and saving a checkpoint (again to abort)", name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave the signals alone
            break
    return previous


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
