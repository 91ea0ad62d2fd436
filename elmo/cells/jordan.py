"""Jordan's recurrent network (Jordan 1986, "Serial Order: A Parallel Distributed Processing
Approach"): the recurrent input is the previous *output*, not the hidden layer.

    h_t = tanh(x_t W + r_{t-1} U + b)        r_{t-1} = y_{t-1} (after the deep transition)
    y_t = clip(h_t W_p, +-proj_clip)          (W_p: H -> P)

The output layer is linear (clipped), like the LSTM's projection, since it feeds the next layer
and the softmax. State: (y (B, P),), so U is (P, H). Semeniuta dropout does not apply (no
separate candidate); variational dropout masks y_{t-1} in the product with U, zoneout acts on y.
Everything else is Elman's network (``elmo.cells.elman``).
"""

from __future__ import annotations

from elmo.cells.elman import Elman


class Jordan(Elman):
    state_names = ("y",)
    feeds_back_output = True
