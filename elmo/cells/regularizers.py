"""Recurrent regularizers: where the dropout masks come from and how they are applied.

Three methods, chosen with ``BiLMConfig.recurrent_dropout_kind`` and a rate ``p``:

* ``variational`` (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout in
  Recurrent Neural Networks", sec. 4): ONE Bernoulli mask per sequence (no time axis), on the
  layer's inputs, on its outputs and on the recurrent state where it enters a matrix product:

      x_t -> x_t * m_x,   h_{t-1} W_h -> (h_{t-1} * m_h) W_h,   y_t -> y_t * m_y

  with m ~ Bernoulli(1 - p) / (1 - p) drawn once per row of the batch. Cells with no recurrent
  matrix product (SRU, QRNN) have no state mask.
* ``semeniuta`` (Semeniuta, Severyn & Barth 2016, "Recurrent Dropout without Memory Loss",
  sec. 3): dropout on the candidate update only, e.g. for an LSTM
  ``c_t = f_t * c_{t-1} + i_t * d(g_t)``. Because the carried memory is never dropped, a fresh
  mask can be drawn at every step (the paper's per-step variant); the masks here have a time axis.
  It needs a separate candidate, so it does not apply to the Elman and Jordan networks.
* ``zoneout`` (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
  Activations", sec. 3): each unit of each recurrent state keeps its previous value with
  probability ``p``, independently at every step:

      training:   s_t = d_t * s_{t-1} + (1 - d_t) * s~_t,   d_t ~ Bernoulli(p)
      evaluation: s_t = p * s_{t-1} + (1 - p) * s~_t        (the expectation of the step)

  Both are ``torch.lerp(s~_t, s_{t-1}, w)`` with ``w = d_t`` or ``w = p``.

In evaluation mode no mask is drawn and no random number is used.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

KINDS = ("variational", "semeniuta", "zoneout")


class DropoutMasks(NamedTuple):
    """The masks of one forward call (rows in the layer's sorted order). Unused ones are None."""

    input: Optional[torch.Tensor] = None  # (B, input_dim)   variational, scaled by 1/(1-p)
    state: Optional[torch.Tensor] = None  # (B, recurrent)   variational, scaled by 1/(1-p)
    output: Optional[torch.Tensor] = None  # (B, P)          variational, scaled by 1/(1-p)
    update: Optional[torch.Tensor] = None  # (T, B, U)       semeniuta, per step, scaled
    zone: Optional[tuple] = None  # per zoned state (T, B, size); 1 = keep the previous value


def dropout_mask(shape: Sequence[int], rate: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1 - rate) / (1 - rate) ("inverted" dropout: the expectation is 1)."""
    keep = torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(1.0 - rate)
    return keep / (1.0 - rate)


def zoneout_mask(shape: Sequence[int], rate: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(rate): 1 where a unit keeps its previous value."""
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(rate)


def sample_masks(kind: Optional[str], rate: float, steps: int, batch: int, *, input_dim: int,
                 output_dim: int, recurrent_dim: Optional[int], update_dim: Optional[int],
                 zoned_dims: Sequence[int], like: torch.Tensor) -> DropoutMasks:
    """Draw the masks of one training forward call (``like`` gives dtype and device)."""
    if kind is None:
        return DropoutMasks()
    if kind == "variational":
        return DropoutMasks(
            input=dropout_mask((batch, input_dim), rate, like),
            state=None if recurrent_dim is None else dropout_mask((batch, recurrent_dim), rate, like),
            output=dropout_mask((batch, output_dim), rate, like))
    if kind == "semeniuta":
        if update_dim is None:
            raise ValueError("semeniuta recurrent dropout needs a cell with a candidate update")
        return DropoutMasks(update=dropout_mask((steps, batch, update_dim), rate, like))
    if kind == "zoneout":
        return DropoutMasks(zone=tuple(zoneout_mask((steps, batch, d), rate, like) for d in zoned_dims))
    raise ValueError(f"unknown recurrent_dropout_kind {kind!r}; valid kinds: {', '.join(KINDS)} or None")
