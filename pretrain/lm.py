"""The bidirectional language model: ``elmo.ElmoBiLM`` plus one softmax for both directions.

The top biLM layer (B, T, 2P) is [forward; backward]: the forward half at position t predicts
token t+1, the backward half token t-1 (Peters et al. 2018, sec. 3.1). The training loss is the
mean of the forward and the backward mean token losses; the module returns sums and counts per
direction so that the trainer can normalise by the counts of all processes together (which makes
several processes equal to one process with the combined batch). ``directions="forward"`` (or
"backward") computes one LM alone, through the same entrance with one stack run: the forward LM
of Kim et al. 2016 and Zaremba et al. 2014 (``train.directions``), at half the recurrent work.

A batch holds each distinct token's characters once (``Batch.token_chars``, by word type): it is
given to ``ElmoBiLM`` as a ``TokenBatch`` whose windows already hold their <S>/</S> tokens
(``add_boundaries=False``: every position comes back, the top layer un-stripped). Without
``dedup`` the full (B, T, C) ids are given instead and deduplicated by the model (the same
numbers; kept as a check).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from elmo.bilm import DIRECTIONS, BiLMState
from elmo.config import ElmoConfig
from elmo.model import ElmoBiLM
from pretrain.batches import Batch
from pretrain.config import SoftmaxConfig
from pretrain.softmax import LMSoftmax


class LMOutput(NamedTuple):
    forward_loss_sum: torch.Tensor   # () float32: summed token losses, forward direction
    backward_loss_sum: torch.Tensor  # () float32
    forward_count: torch.Tensor      # () long: number of forward targets
    backward_count: torch.Tensor     # () long
    state: BiLMState                 # final biLM state of every row (not detached)


class BidirectionalLM(nn.Module):
    """``elmo.ElmoBiLM`` (``self.bilm``, what is exported and embedded with) plus the softmax
    shared by both directions (``self.softmax``): the model pretraining trains."""

    def __init__(self, config: ElmoConfig, vocab_size: int, softmax: SoftmaxConfig,
                 dedup: bool = True, bilm: Optional[ElmoBiLM] = None) -> None:
        super().__init__()
        self.bilm = bilm if bilm is not None else ElmoBiLM(config)
        self.softmax = LMSoftmax(config.bilm.projection_dim, vocab_size, softmax)
        self.dedup = dedup

    def top_layer(self, batch: Batch, state: Optional[BiLMState] = None, dropout: float = 0.0,
                  full_rows: bool = False, directions: str = "both", input_dropout: bool = True
                  ) -> tuple[torch.Tensor, BiLMState]:
        """The top biLM layer (B, T, 2P) (float32; (B, T, P) for one direction) and the final
        state. ``full_rows``: every row has all T positions (window mode), so the biLM needs no
        lengths from the device. ``directions`` and ``input_dropout``: as ``ElmoBiLM.forward``."""
        inputs = batch.token_batch() if self.dedup else batch.char_ids()
        lengths = [batch.tokens.shape[1]] * batch.tokens.shape[0] if full_rows else None
        out = self.bilm(inputs, state, add_boundaries=False, dropout=dropout, lengths=lengths,
                        directions=directions, input_dropout=input_dropout)
        return out.layers[-1], out.state

    def forward(self, batch: Batch, state: Optional[BiLMState] = None, dropout: float = 0.0,
                generator: Optional[torch.Generator] = None, full_rows: bool = False,
                directions: str = "both", input_dropout: bool = True) -> LMOutput:
        """The loss sums and counts of ``directions`` ("both", or "forward" / "backward" alone: the
        other stack does no work, its losses and counts are zero and its state passes through)."""
        top, final = self.top_layer(batch, state, dropout, full_rows, directions, input_dropout)
        if dropout > 0 and self.training:  # the original also drops the LSTM output before the softmax
            top = nn.functional.dropout(top, dropout, training=True)
        runs = DIRECTIONS[directions]  # (0, 1), (0,) or (1,): forward 0, backward 1
        P = top.shape[-1] // len(runs)
        halves = top.split(P, dim=-1)  # (B, T, P) per direction run
        targets = [batch.forward_targets if d == 0 else batch.backward_targets for d in runs]
        sels = [t >= 0 for t in targets]  # (B, T) each
        if self.softmax.kind == "adaptive":  # selects its clusters' rows by value anyway
            hidden = _cat([h[sel] for h, sel in zip(halves, sels)])  # (Nf + Nb, P)
            losses = self.softmax(hidden, _cat([t[sel] for t, sel in zip(targets, sels)]), generator)
            n = int(sels[0].sum())
        else:  # every position, the ones without a target masked out of the sums: fixed shapes,
            # nothing read back from the device (window batches have targets at nearly every position)
            hidden = _cat([h.reshape(-1, P) for h in halves])  # (2BT, P), or (BT, P) for one direction
            flat = _cat([t.reshape(-1) for t in targets])
            losses = self.softmax(hidden, flat.clamp(min=0), generator)
            losses = torch.where(flat >= 0, losses, losses.new_zeros(()))
            n = sels[0].numel()
        parts = (losses[:n], losses[n:]) if len(runs) == 2 else (losses,)
        sums, counts = [losses.new_zeros(())] * 2, [sels[0].new_zeros((), dtype=torch.long)] * 2
        for d, part, sel in zip(runs, parts, sels):  # a direction not run: zero loss, no targets
            sums[d], counts[d] = part.sum(), sel.sum()
        return LMOutput(sums[0], sums[1], counts[0], counts[1], final)


def _cat(tensors: list) -> torch.Tensor:
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


@torch.no_grad()
def evaluate(model: BidirectionalLM, batches, max_batches: Optional[int] = None,
             directions: str = "both") -> dict:
    """Exact (full-softmax) mean loss and perplexity per direction over sentence-mode batches
    (a direction not run counts no targets: its loss and perplexity are NaN)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums, counts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            out = model(batch.to(device), directions=directions)
            sums += torch.stack([out.forward_loss_sum, out.backward_loss_sum]).double().cpu()
            counts += torch.stack([out.forward_count, out.backward_count]).cpu()
    finally:
        model.train(was_training)
    return perplexities(sums, counts)


def perplexities(sums: torch.Tensor, counts: torch.Tensor) -> dict:
    """Mean loss and perplexity per direction; NaN for a direction that counted no targets."""
    loss = [s / c if c else math.nan for s, c in zip(sums.tolist(), counts.tolist())]
    return {"forward_loss": loss[0], "backward_loss": loss[1],
            "forward_ppl": math.exp(loss[0]), "backward_ppl": math.exp(loss[1]),
            "tokens": int(counts[0])}


def describe_perplexities(forward: float, backward: Optional[float]) -> str:
    """'forward 99.71, backward 101.20' for log lines; a direction not trained (NaN or None, as in
    results.json) says so."""
    if backward is None or math.isnan(backward):
        return f"forward {forward:.2f} (forward LM only)"
    return f"forward {forward:.2f}, backward {backward:.2f}"


def unigram_log_probs(target_counts: torch.Tensor) -> torch.Tensor:
    """Add-one smoothed unigram log-probabilities (V,) from training target counts (V,)."""
    counts = target_counts.double() + 1.0
    return torch.log(counts / counts.sum())


def unigram_perplexity(log_probs: torch.Tensor, batches) -> dict:
    """The unigram model's perplexity on exactly the targets the LM is evaluated on."""
    sums, counts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    for batch in batches:
        for d, targets in enumerate((batch.forward_targets, batch.backward_targets)):
            t = targets[targets >= 0]
            sums[d] -= log_probs[t].sum()
            counts[d] += len(t)
    return perplexities(sums, counts)
