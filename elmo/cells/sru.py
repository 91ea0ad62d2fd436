"""Simple Recurrent Unit (Lei, Zhang & Artzi 2017, "Training RNNs as Fast as CNNs", arXiv
1709.02755v1, eq. 3-7): the gates depend on the input only, so every matrix product covers the
whole sequence at once and the recurrence is element-wise.

    x~_t = x_t W                       f_t = sigmoid(x_t W_f + b_f)       r_t = sigmoid(x_t W_r + b_r)
    c_t = f_t * c_{t-1} + (1 - f_t) * x~_t
    h_t = r_t * tanh(c_t) + (1 - r_t) * x'_t         (highway; x'_t = x_t if in == H, else x_t W_s)
    y_t = clip(h_t W_p, +-proj_clip)                  (projection to P)

State: (c (B, H),). Only ``c_t = f_t c_{t-1} + u_t`` is sequential (``elmo.cells.scan``).
Regularizers keep that form: semeniuta drops x~_t in u_t = (1 - f_t) d(x~_t); zoneout with keep
mask d_t turns the step into c_t = (f_t + d_t (1 - f_t)) c_{t-1} + (1 - d_t) u_t (d_t = p at
evaluation); variational dropout masks x_t and y_t (there is no recurrent matmul to mask).
``cell_clip`` is not used: c_t is a convex combination of c_{t-1} and x~_t, so it stays bounded.
At padded positions f = 1 and u = 0, so a row's state stops changing after its last step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.cells.base import RecurrentLayer
from elmo.cells.regularizers import DropoutMasks
from elmo.cells.scan import linear_scan, running_mask, zoneout_scan_inputs


class Sru(RecurrentLayer):
    state_names = ("c",)

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (hidden_dim,), recurrent_dim=None,
                         update_dim=hidden_dim, **options)
        H = hidden_dim
        self.skip_projected = input_dim != hidden_dim
        blocks = 4 if self.skip_projected else 3  # [W, W_f, W_r (, W_s)]
        self.input_weight = nn.Parameter(torch.empty(input_dim, blocks * H))
        self.gate_bias = nn.Parameter(torch.empty(2 * H))  # [b_f, b_r]
        self.projection_weight = nn.Parameter(torch.empty(H, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.projection_weight)
        nn.init.zeros_(self.gate_bias)

    def forward(self, inputs: torch.Tensor, batch_sizes: Sequence[int], state: Optional[tuple] = None,
                masks: Optional[DropoutMasks] = None) -> tuple[torch.Tensor, tuple]:
        """inputs (T, B, in), rows sorted longest first -> outputs (T, B, P), final (c,)."""
        T, B, _ = inputs.shape
        (c0,) = self._start(inputs, batch_sizes, state)
        masks = self._masks(T, B, masks, c0)
        if T == 0:
            return inputs.new_zeros((0, B, self.projection_dim), dtype=self.state_dtype), (c0,)
        H, sd = self.hidden_dim, self.state_dtype
        x = inputs.to(sd)
        if masks.input is not None:
            x = x * masks.input
        zeros = self.gate_bias.new_zeros(H)
        bias = torch.cat([zeros, self.gate_bias] + ([zeros] if self.skip_projected else []))
        proj = self.linear(x, self.input_weight, bias)  # (T, B, 3H or 4H): one matmul
        # split (not slicing): its backward is one concatenation instead of a zero-filled
        # full-size gradient per slice
        x_tilde, gates, *rest = proj.split([H, 2 * H] + [H] * self.skip_projected, -1)
        f, r = torch.sigmoid(gates).split(H, -1)
        skip = rest[0] if self.skip_projected else x
        if masks.update is not None:
            x_tilde = x_tilde * masks.update
        u = torch.addcmul(x_tilde, f, x_tilde, value=-1.0)  # (1 - f) * x~
        f, u = zoneout_scan_inputs(self, f, u, masks)
        running = None
        if batch_sizes[-1] < B:  # padded rows: f = 1, u = 0 past each row's end
            running = running_mask(batch_sizes, B, inputs.device)  # (T, B, 1)
            f, u = torch.where(running, f, 1.0), torch.where(running, u, 0.0)
        c = linear_scan(f, u, c0)  # (T, B, H): the only sequential part
        h = torch.lerp(skip, torch.tanh(c), r)  # r * tanh(c) + (1 - r) * x'
        if running is not None:
            h = h * running
        out = self.project(h)  # (T, B, P), zero past each row's end
        if masks.output is not None:
            out = out * masks.output
        return out, (c[-1],)

