"""Gated recurrent unit (Cho et al. 2014, "Learning Phrase Representations using RNN
Encoder-Decoder for Statistical Machine Translation", sec. 2.3, eq. 5-8).

    r_t = sigmoid(x_t W_r + r'_{t-1} U_r + b_r)               reset gate
    z_t = sigmoid(x_t W_z + r'_{t-1} U_z + b_z)               update gate
    h~_t = tanh(x_t W + (r_t * r'_{t-1}) U + b)               the reset gate acts BEFORE U
    h_t = z_t * h_{t-1} + (1 - z_t) * h~_t                    (the paper's convention for z)
    y_t = clip(h_t W_p, +-proj_clip)                          (projection to P, all steps at once)

where r'_{t-1} = h_{t-1} after variational dropout and the deep transition (plain h_{t-1} by
default). As in the paper the reset gate multiplies the previous state before the product with
U (cuDNN and ``torch.nn.GRU`` apply it after the product instead), so the candidate needs its
own matmul per step. State: (h (B, H),). Semeniuta dropout acts on h~_t.
"""

from __future__ import annotations

import torch
from torch import nn

from elmo.cells.base import SteppedLayer


class Gru(SteppedLayer):
    state_names = ("h",)

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (hidden_dim,),
                         recurrent_dim=hidden_dim, update_dim=hidden_dim, **options)
        H = hidden_dim
        self.input_weight = nn.Parameter(torch.empty(input_dim, 3 * H))  # [W_r, W_z, W]
        self.input_bias = nn.Parameter(torch.empty(3 * H))  # [b_r, b_z, b]
        self.gate_weight = nn.Parameter(torch.empty(H, 2 * H))  # [U_r, U_z]
        self.candidate_weight = nn.Parameter(torch.empty(H, H))  # U
        self.projection_weight = nn.Parameter(torch.empty(H, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.gate_weight, self.candidate_weight,
                          self.projection_weight)
        nn.init.zeros_(self.input_bias)
        self.reset_transition()

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.input_weight, self.input_bias)  # (T, B, 3H): one matmul

    def step(self, xp, state, state_mask, update_mask):
        h = state[0]
        H = self.hidden_dim
        r_in = self.recurrent_input(h, state_mask)  # (n, H)
        rz = torch.sigmoid(self.addmm(xp[:, : 2 * H], r_in, self.gate_weight))
        reset, update = rz[:, :H], rz[:, H:]
        candidate = torch.tanh(self.addmm(xp[:, 2 * H :], reset * r_in, self.candidate_weight))
        if update_mask is not None:
            candidate = candidate * update_mask  # Semeniuta: dropout on the candidate only
        return (torch.lerp(candidate, h, update),)  # z * h_{t-1} + (1 - z) * h~

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        return self.project(seq)
