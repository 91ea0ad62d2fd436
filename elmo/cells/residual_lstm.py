"""Residual LSTM: a shortcut from the layer's input into the output, inside the output gate.

The equations are those of Kim, El-Khamy & Lee 2017 ("Residual LSTM: Design of a Deep Recurrent
Architecture for Distant Speech Recognition", eq. 7-11, without peepholes); the idea of residual
paths through stacked LSTMs goes back to Prakash et al. 2016 ("Neural Paraphrase Generation with
Stacked Residual LSTM Networks"), whose stack-level residual the biLM already has
(``use_skip_connections``). Here the shortcut is inside every layer:

    [i, f, g] = x_t W_x + r_{t-1} W_h + b               (blocks of H)
    o_t = sigmoid(x_t W_xo + r_{t-1} W_ho + b_o)          (P units: the gate acts on the output)
    c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g),   clipped to +-cell_clip   (+1 as the LSTM)
    h_t = clip(o_t * (tanh(c_t) W_p + x_t W_s), +-proj_clip)

State: (h (B, P), c (B, H)). ``x_t W_s`` (W_s: in -> P, the issue's ``W_h x_t``) is computed for
all steps before the loop, together with the gates' input product.
"""

from __future__ import annotations

import torch
from torch import nn

from elmo.cells.base import SteppedLayer
from elmo.lstm import forget_bias_added


class ResidualLstm(SteppedLayer):
    state_names = ("h", "c")

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (projection_dim, hidden_dim),
                         recurrent_dim=projection_dim, update_dim=hidden_dim, **options)
        G = 3 * hidden_dim + projection_dim  # i, f, g (H each) and o (P)
        self.input_weight = nn.Parameter(torch.empty(input_dim, G))  # W_x (and W_xo)
        self.input_bias = nn.Parameter(torch.empty(G))
        self.state_weight = nn.Parameter(torch.empty(projection_dim, G))  # W_h (and W_ho)
        self.shortcut_weight = nn.Parameter(torch.empty(input_dim, projection_dim))  # W_s
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.state_weight, self.shortcut_weight,
                          self.projection_weight)
        nn.init.zeros_(self.input_bias)
        self.reset_transition()

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        # (T, B, 3H+P) gates and (T, B, P) shortcut, each one matmul over all steps
        bias = forget_bias_added(self.input_bias, 1, self.hidden_dim)  # +1.0 on f, as the LSTM
        return torch.cat([self.linear(x, self.input_weight, bias),
                          self.linear(x, self.shortcut_weight)], -1)

    def step(self, xp, state, state_mask, update_mask):
        h, c = state
        H, P = self.hidden_dim, self.projection_dim
        r = self.recurrent_input(h, state_mask)
        gates = self.addmm(xp[:, : 3 * H + P], r, self.state_weight)  # (n, 3H+P)
        i, f = torch.sigmoid(gates[:, :H]), torch.sigmoid(gates[:, H : 2 * H])
        g = torch.tanh(gates[:, 2 * H : 3 * H])
        o = torch.sigmoid(gates[:, 3 * H :])  # (n, P)
        if update_mask is not None:
            g = g * update_mask
        c = self.clip_cell(torch.addcmul(f * c, i, g))
        m = self.linear(torch.tanh(c), self.projection_weight)  # (n, P)
        h = self.clip_output(o * (m + xp[:, 3 * H + P :]))
        return h, c

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        return seq
