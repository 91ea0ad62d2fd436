"""The original ELMo cell, run by the generic loop so that regularizers and deep transitions apply.

Same equations and the same parameters (names, shapes, gate order (i, f, o, g), the stored bias
without the forget gate's run-time +1.0) as ``elmo.lstm.LstmProjection`` (Hochreiter &
Schmidhuber 1997 with the forget gate of Gers et al. 2000 and the projection of Sak et al. 2014):

    [i, f, o, g] = x_t W_x + r_{t-1} W_h + b          r_{t-1} = h_{t-1} (after the deep transition)
    c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g),   clipped to +-cell_clip
    h_t = clip((sigmoid(o) * tanh(c_t)) W_p, +-proj_clip)

State: (h (B, P), c (B, H)). Semeniuta dropout acts on tanh(g); zoneout on h and c.
``cell="lstm"`` uses ``LstmProjection`` itself unless a recurrent regularizer or a deep transition
is configured; without them this class computes the same function (a test checks it), and its
weights load into ``LstmProjection`` and export to the original format.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from elmo.cells.base import SteppedLayer
from elmo.lstm import FORGET_BIAS


class Lstm(SteppedLayer):
    state_names = ("h", "c")
    n_gates = 4  # blocks of H in the input and state products (i, f, o, g)
    forget_block = 1  # the block that gets FORGET_BIAS at run time, as in the original

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (projection_dim, hidden_dim),
                         recurrent_dim=projection_dim, update_dim=hidden_dim, **options)
        G = self.n_gates * hidden_dim
        self.input_weight = nn.Parameter(torch.empty(input_dim, G))  # W_x
        self.input_bias = nn.Parameter(torch.empty(G))  # b (FORGET_BIAS is added to f)
        self.state_weight = nn.Parameter(torch.empty(projection_dim, G))  # W_h
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.state_weight, self.projection_weight)
        nn.init.zeros_(self.input_bias)
        self.reset_transition()

    def effective_bias(self) -> torch.Tensor:
        """The stored bias with FORGET_BIAS added to the forget gate's block."""
        return forget_bias_added(self.input_bias, self.forget_block, self.hidden_dim)

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.input_weight, self.effective_bias())  # (T, B, 4H): one matmul

    def gates(self, xp: torch.Tensor, h: torch.Tensor, state_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t W_x + b + r_{t-1} W_h: (n, 4H)."""
        r = self.recurrent_input(h, state_mask)
        return self.addmm(xp, r, self.state_weight)

    def output(self, o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h_t = clip((o * tanh(c_t)) W_p): (n, P)."""
        return self.project(o * torch.tanh(c))

    def step(self, xp, state, state_mask, update_mask):
        h, c = state
        H = self.hidden_dim
        gates = self.gates(xp, h, state_mask)  # (n, 4H)
        sig = torch.sigmoid(gates[:, : 3 * H])
        i, f, o = sig[:, :H], sig[:, H : 2 * H], sig[:, 2 * H :]
        g = torch.tanh(gates[:, 3 * H :])
        if update_mask is not None:
            g = g * update_mask  # Semeniuta: dropout on the candidate only
        c = self.clip_cell(torch.addcmul(f * c, i, g))  # (n, H)
        return self.output(o, c), c

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        return seq  # h_t is already the projected output


def forget_bias_added(bias: torch.Tensor, block: int, size: int) -> torch.Tensor:
    offset = torch.zeros_like(bias)
    offset[block * size : (block + 1) * size] = FORGET_BIAS
    return bias + offset
