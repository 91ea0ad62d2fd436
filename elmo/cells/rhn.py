"""Recurrent Highway Network (Zilly et al. 2017, "Recurrent Highway Networks", sec. 4, eq. 6-9):
a deep transition of L highway micro-steps per time step; the input enters the first one only.

    s_0 = s_{t-1}            (the previous time step's last micro-step)
    for l = 1 .. L:
        h_l = tanh   (1[l=1] x_t W_H + s'_{l-1} R_Hl + b_Hl)
        t_l = sigmoid(1[l=1] x_t W_T + s'_{l-1} R_Tl + b_Tl)       transform gate
        c_l = sigmoid(1[l=1] x_t W_C + s'_{l-1} R_Cl + b_Cl)       carry gate
        s_l = h_l * t_l + s_{l-1} * c_l
    s_t = s_L,   y_t = clip(s_t W_p, +-proj_clip)   (projection to P, all steps at once)

s' is s after the variational state mask (the same mask at every micro-step). This is the
general form with separate transform and carry gates (the paper's experiments couple them,
c = 1 - t). L is ``BiLMConfig.transition_depth``. The transform bias starts at -2 and the carry
bias at +2, so a new network starts close to carrying its state (the paper's advice for deep
highway layers). State: (s (B, H),). Semeniuta dropout acts on every h_l (one mask per
micro-step), zoneout on s_t.
"""

from __future__ import annotations

import torch
from torch import nn

from elmo.cells.base import SteppedLayer


class Rhn(SteppedLayer):
    state_names = ("s",)

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, transition_depth: int = 1,
                 **options) -> None:
        if transition_depth < 1:
            raise ValueError(f"Rhn: transition_depth (the recurrence depth L) must be >= 1, "
                             f"got {transition_depth}")
        H = hidden_dim
        # The micro-steps are this cell's deep transition: no extra transition layers.
        super().__init__(input_dim, hidden_dim, projection_dim, (H,), recurrent_dim=H,
                         update_dim=transition_depth * H, transition_depth=1, **options)
        self.input_weight = nn.Parameter(torch.empty(input_dim, 3 * H))  # [W_H, W_T, W_C]
        L = transition_depth
        self.micro_weights = nn.ParameterList(torch.empty(H, 3 * H) for _ in range(L))  # [R_Hl, R_Tl, R_Cl]
        self.micro_biases = nn.ParameterList(torch.empty(3 * H) for _ in range(L))  # b_l
        self.projection_weight = nn.Parameter(torch.empty(H, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_dim
        self.init_uniform(self.input_weight, self.projection_weight, *self.micro_weights)
        with torch.no_grad():
            for b in self.micro_biases:
                b.zero_()
                b[H : 2 * H] = -2.0  # transform gate: mostly closed
                b[2 * H :] = 2.0  # carry gate: mostly open

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.input_weight)  # (T, B, 3H): one matmul

    def step(self, xp, state, state_mask, update_mask):
        s = state[0]
        H = self.hidden_dim
        for l, (weight, bias) in enumerate(zip(self.micro_weights, self.micro_biases)):
            s_in = s if state_mask is None else s * state_mask
            pre = self.addmm(bias.to(self.state_dtype), s_in, weight)  # (n, 3H)
            if l == 0:
                pre = pre + xp
            h = torch.tanh(pre[:, :H])
            gates = torch.sigmoid(pre[:, H:])
            if update_mask is not None:
                h = h * update_mask[:, l * H : (l + 1) * H]
            s = torch.addcmul(h * gates[:, :H], s, gates[:, H:])
        return (s,)

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        return self.project(seq)
