"""The bidirectional language model: ``elmo.ElmoBiLM`` plus one softmax for both directions.

The top biLM layer (B, T, 2P) is [forward; backward]: the forward half at position t predicts
token t+1, the backward half token t-1 (Peters et al. 2018, sec. 3.1). The training loss is the
mean of the forward and the backward mean token losses; the module returns sums and counts per
direction so that the trainer can normalise by the counts of all processes together (which makes
several processes equal to one process with the combined batch).

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

from elmo.bilm import BiLMState
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
                  full_rows: bool = False) -> tuple[torch.Tensor, BiLMState]:
        """The top biLM layer (B, T, 2P) (float32) and the final state. ``full_rows``: every row
        has all T positions (window mode), so the biLM needs no lengths from the device."""
        inputs = batch.token_batch() if self.dedup else batch.char_ids()
        lengths = [batch.tokens.shape[1]] * batch.tokens.shape[0] if full_rows else None
        out = self.bilm(inputs, state, add_boundaries=False, dropout=dropout, lengths=lengths)
        return out.layers[-1], out.state

    def forward(self, batch: Batch, state: Optional[BiLMState] = None, dropout: float = 0.0,
                generator: Optional[torch.Generator] = None, full_rows: bool = False) -> LMOutput:
        top, final = self.top_layer(batch, state, dropout, full_rows)
        if dropout > 0 and self.training:  # the original also drops the LSTM output before the softmax
            top = nn.functional.dropout(top, dropout, training=True)
        P = top.shape[-1] // 2
        fsel, bsel = batch.forward_targets >= 0, batch.backward_targets >= 0  # (B, T)
        if self.softmax.kind == "adaptive":  # selects its clusters' rows by value anyway
            hidden = torch.cat([top[..., :P][fsel], top[..., P:][bsel]])  # (Nf + Nb, P)
            targets = torch.cat([batch.forward_targets[fsel], batch.backward_targets[bsel]])
            losses = self.softmax(hidden, targets, generator)  # (Nf + Nb,)
            nf = int(fsel.sum())
            return LMOutput(losses[:nf].sum(), losses[nf:].sum(), fsel.sum(), bsel.sum(), final)
        # Every position, the ones without a target masked out of the sums: fixed shapes, nothing
        # read back from the device (window batches have targets at nearly every position).
        hidden = torch.cat([top[..., :P].reshape(-1, P), top[..., P:].reshape(-1, P)])  # (2BT, P)
        targets = torch.cat([batch.forward_targets.reshape(-1), batch.backward_targets.reshape(-1)])
        losses = self.softmax(hidden, targets.clamp(min=0), generator)  # (2BT,)
        losses = torch.where(targets >= 0, losses, losses.new_zeros(()))
        n = fsel.numel()
        return LMOutput(losses[:n].sum(), losses[n:].sum(), fsel.sum(), bsel.sum(), final)


@torch.no_grad()
def evaluate(model: BidirectionalLM, batches, max_batches: Optional[int] = None) -> dict:
    """Exact (full-softmax) mean loss and perplexity per direction over sentence-mode batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums, counts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            out = model(batch.to(device))
            sums += torch.stack([out.forward_loss_sum, out.backward_loss_sum]).double().cpu()
            counts += torch.stack([out.forward_count, out.backward_count]).cpu()
    finally:
        model.train(was_training)
    return perplexities(sums, counts)


def perplexities(sums: torch.Tensor, counts: torch.Tensor) -> dict:
    loss = (sums / counts.clamp(min=1)).tolist()
    return {"forward_loss": loss[0], "backward_loss": loss[1],
            "forward_ppl": math.exp(loss[0]), "backward_ppl": math.exp(loss[1]),
            "tokens": int(counts[0])}


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
