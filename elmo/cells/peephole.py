"""LSTM with peephole connections (Gers & Schmidhuber 2000, "Recurrent Nets that Time and Count";
the form of Graves 2013, "Generating Sequences with Recurrent Neural Networks", eq. 7-11):
the gates also see the memory cell through diagonal (element-wise) weights. As in the LSTM,
1.0 is added to the forget gate's bias b_f at run time.

    i_t = sigmoid(x_t W_xi + r_{t-1} W_hi + w_ci * c_{t-1} + b_i)
    f_t = sigmoid(x_t W_xf + r_{t-1} W_hf + w_cf * c_{t-1} + b_f)
    g_t = tanh(x_t W_xg + r_{t-1} W_hg + b_g)
    c_t = f_t * c_{t-1} + i_t * g_t                     clipped to +-cell_clip
    o_t = sigmoid(x_t W_xo + r_{t-1} W_ho + w_co * c_t + b_o)      (the output gate sees c_t)
    h_t = clip((o_t * tanh(c_t)) W_p, +-proj_clip)

State: (h (B, P), c (B, H)); parameters as ``Lstm`` plus ``peephole`` (3, H) = [w_ci; w_cf; w_co].
"""

from __future__ import annotations

import torch
from torch import nn

from elmo.lstm import Lstm


class PeepholeLstm(Lstm):
    runs_fused = False  # its own step, in the packed loop

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, **options)
        self.peephole = nn.Parameter(torch.empty(3, hidden_dim))
        bound = hidden_dim ** -0.5
        nn.init.uniform_(self.peephole, -bound, bound)

    def step(self, xp, state, state_mask, update_mask):
        h, c_prev = state
        H = self.hidden_dim
        gates = self.gates(xp, h, state_mask)  # (n, 4H): (i, f, o, g)
        w = self.peephole.to(self.state_dtype)
        i = torch.sigmoid(torch.addcmul(gates[:, :H], w[0], c_prev))
        f = torch.sigmoid(torch.addcmul(gates[:, H : 2 * H], w[1], c_prev))
        g = torch.tanh(gates[:, 3 * H :])
        if update_mask is not None:
            g = g * update_mask
        c = self.clip_cell(torch.addcmul(f * c_prev, i, g))
        o = torch.sigmoid(torch.addcmul(gates[:, 2 * H : 3 * H], w[2], c))
        return self.output(o, c), c
