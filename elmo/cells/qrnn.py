"""Quasi-recurrent neural network with fo-pooling (Bradbury et al. 2017, "Quasi-Recurrent Neural
Networks", sec. 2, eq. 1-4), convolution width 2: the gates come from a causal convolution over
the inputs (all steps at once), the recurrence is element-wise.

    z_t = tanh   (x_{t-1} W_z1 + x_t W_z2 + b_z)
    f_t = sigmoid(x_{t-1} W_f1 + x_t W_f2 + b_f)
    o_t = sigmoid(x_{t-1} W_o1 + x_t W_o2 + b_o)
    c_t = f_t * c_{t-1} + (1 - f_t) * z_t            fo-pooling
    h_t = o_t * c_t,   y_t = clip(h_t W_p, +-proj_clip)   (projection to P)

The convolution needs the input before the first step, so the state is (c (B, H), x (B, in)):
the memory and the last input read (zeros for a fresh row, as the paper's masked convolution).
A stateful model therefore computes over consecutive windows exactly what it computes over
their concatenation. Only ``c_t = f_t c_{t-1} + u_t`` is sequential (``elmo.cells.scan``).
Semeniuta dropout drops z_t in (1 - f_t) d(z_t); zoneout acts on c (with keep mask d_t it sets
f_t to 1, the paper's own zoneout on the forget gate, sec. 2.1); variational dropout masks x
(both taps) and y. ``cell_clip`` is not used: |c_t| <= 1 since z is a tanh.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.cells.base import RecurrentLayer
from elmo.cells.regularizers import DropoutMasks
from elmo.cells.scan import linear_scan, running_mask, zoneout_scan_inputs


class Qrnn(RecurrentLayer):
    state_names = ("c", "x")

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (hidden_dim, input_dim),
                         recurrent_dim=None, update_dim=hidden_dim, n_zoned=1, **options)
        # One matmul over [x_{t-1}; x_t] is the width-2 convolution: [W_z, W_f, W_o] stacked.
        self.input_weight = nn.Parameter(torch.empty(2 * input_dim, 3 * hidden_dim))  # rows [x_{t-1}; x_t]
        self.input_bias = nn.Parameter(torch.empty(3 * hidden_dim))  # [b_z, b_f, b_o]
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.projection_weight)
        nn.init.zeros_(self.input_bias)

    def forward(self, inputs: torch.Tensor, batch_sizes: Sequence[int], state: Optional[tuple] = None,
                masks: Optional[DropoutMasks] = None) -> tuple[torch.Tensor, tuple]:
        """inputs (T, B, in), rows sorted longest first -> outputs (T, B, P), final (c, x)."""
        T, B, _ = inputs.shape
        c0, x0 = self._start(inputs, batch_sizes, state)
        masks = self._masks(T, B, masks, c0)
        if T == 0:
            return inputs.new_zeros((0, B, self.projection_dim), dtype=self.state_dtype), (c0, x0)
        H, sd = self.hidden_dim, self.state_dtype
        x = inputs.to(sd)
        x_all = torch.cat([x0.unsqueeze(0), x], 0)  # (T+1, B, in): x_{-1} .. x_{T-1}
        if masks.input is not None:
            x_all = x_all * masks.input
        taps = torch.cat([x_all[:-1], x_all[1:]], -1)  # (T, B, 2 in): [x_{t-1}; x_t]
        gates = self.linear(taps, self.input_weight, self.input_bias)  # (T, B, 3H): one matmul
        z_pre, fo_pre = gates.split([H, 2 * H], -1)  # split: one concatenation in backward
        z = torch.tanh(z_pre)
        f, o = torch.sigmoid(fo_pre).split(H, -1)
        if masks.update is not None:
            z = z * masks.update
        u = torch.addcmul(z, f, z, value=-1.0)  # (1 - f) * z
        f, u = zoneout_scan_inputs(self, f, u, masks)
        padded = batch_sizes[-1] < B
        if padded:  # f = 1, u = 0 past each row's end: the state stops changing
            running = running_mask(batch_sizes, B, inputs.device)  # (T, B, 1)
            f, u = torch.where(running, f, 1.0), torch.where(running, u, 0.0)
        c = linear_scan(f, u, c0)  # (T, B, H): the only sequential part
        h = o * c
        if padded:
            h = h * running
        out = self.project(h)  # (T, B, P), zero past each row's end
        if masks.output is not None:
            out = out * masks.output
        if not padded:
            return out, (c[-1], x[-1])
        # The last input each row read (its own last step; unchanged for a row of length 0).
        lengths = running.squeeze(-1).sum(0)  # (B,)
        last = (lengths - 1).clamp(min=0).view(1, B, 1).expand(1, B, x.shape[-1])
        x_last = torch.where((lengths > 0).unsqueeze(-1), x.gather(0, last).squeeze(0), x0)
        return out, (c[-1], x_last)
