"""Elman's simple recurrent network (Elman 1990, "Finding Structure in Time"): the hidden layer
feeds back into itself.

    h_t = tanh(x_t W + r_{t-1} U + b)        r_{t-1} = h_{t-1} (after the deep transition)
    y_t = clip(h_t W_p, +-proj_clip)          (the output projection to P, for all steps at once)

State: (h (B, H),). There is no separate candidate update, so semeniuta dropout does not apply;
variational dropout masks h_{t-1} in the product with U, zoneout acts on h.

Jordan's network (``elmo.cells.jordan``) is the same layer with the output fed back instead of
the hidden layer (``feeds_back_output``).
"""

from __future__ import annotations

import torch
from torch import nn

from elmo.cells.base import SteppedLayer


class Elman(SteppedLayer):
    state_names = ("h",)
    feeds_back_output = False  # Jordan: the state is y_t (P), not h_t (H)

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        R = projection_dim if self.feeds_back_output else hidden_dim  # the state's size
        super().__init__(input_dim, hidden_dim, projection_dim, (R,),
                         recurrent_dim=R, update_dim=None, **options)
        self.input_weight = nn.Parameter(torch.empty(input_dim, hidden_dim))  # W
        self.input_bias = nn.Parameter(torch.empty(hidden_dim))  # b
        self.state_weight = nn.Parameter(torch.empty(R, hidden_dim))  # U
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.state_weight, self.projection_weight)
        nn.init.zeros_(self.input_bias)
        self.reset_transition()

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.input_weight, self.input_bias)  # (T, B, H): one matmul

    def step(self, xp, state, state_mask, update_mask):
        r = self.recurrent_input(state[0], state_mask)
        h = torch.tanh(self.addmm(xp, r, self.state_weight))  # (n, H)
        return (self.project(h),) if self.feeds_back_output else (h,)

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        # Elman: project every step's h at once; Jordan: the state already is the output.
        return seq if self.feeds_back_output else self.project(seq)  # (T, B, P)
