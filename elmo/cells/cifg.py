"""LSTM with a coupled input and forget gate, CIFG (Greff et al. 2017, "LSTM: A Search Space
Odyssey", variant CIFG; the same coupling as the GRU's update gate): the input gate is 1 - f.

    [f, o, g] = x_t W_x + r_{t-1} W_h + b                (three blocks of H instead of four)
    c_t = sigmoid(f + 1) * c_{t-1} + (1 - sigmoid(f + 1)) * tanh(g),   clipped to +-cell_clip
    h_t = clip((sigmoid(o) * tanh(c_t)) W_p, +-proj_clip)

State: (h (B, P), c (B, H)). A quarter fewer gate parameters than the LSTM at the same H.
"""

from __future__ import annotations

import torch

from elmo.lstm import Lstm


class CifgLstm(Lstm):
    n_gates = 3  # (f, o, g)
    runs_fused = False  # its own step, in the packed loop
    forget_block = 0  # gets FORGET_BIAS at run time, as the LSTM's

    def step(self, xp, state, state_mask, update_mask):
        h, c = state
        H = self.hidden_dim
        gates = self.gates(xp, h, state_mask)  # (n, 3H)
        sig = torch.sigmoid(gates[:, : 2 * H])
        f, o = sig[:, :H], sig[:, H:]
        g = torch.tanh(gates[:, 2 * H :])
        if update_mask is not None:
            g = g * update_mask
        c = self.clip_cell(torch.addcmul(f * c, 1 - f, g))
        return self.output(o, c), c
