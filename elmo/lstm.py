"""One direction of one biLM layer: an LSTM with cell clipping and an output projection.

This is the cell of the original ELMo (bilm-tf's ``LSTMCell(num_proj=..., cell_clip=...,
proj_clip=...)``, Sak et al. 2014 for the projection):

    [i, f, o, g] = x_t W_x + h_{t-1} W_h + b          (W_x: in -> 4H, W_h: P -> 4H)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   clipped to +-cell_clip
    h_t = clip((sigmoid(o) * tanh(c_t)) W_p, +-proj_clip) (W_p: H -> P)

The original adds 1.0 to the forget gate at run time; here it lives in the bias (the weight
loader adds it, the exporter removes it), and new models start with a forget bias of 1.0.
Gate blocks are stored in the order (i, f, o, g) so one sigmoid covers three of them; the
original stores (i, g, f, o) and the weight loader reorders.

Speed: the input product ``x W_x`` for every time step is one large matmul before the loop; the
loop does one (rows, P) @ (P, 4H) and one (rows, H) @ (H, P) product per step plus a few
element-wise ops. Sequences are processed "packed": rows are sorted by length (longest first)
and step t only touches the ``batch_sizes[t]`` rows still running, so padding costs nothing and
never changes a row's state.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h (B, P), c (B, H)), float32


class LstmProjection(nn.Module):
    """A single-direction LSTM layer with cell clip, projection and projection clip."""

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None) -> None:
        super().__init__()
        self.input_dim, self.hidden_dim, self.projection_dim = input_dim, hidden_dim, projection_dim
        self.cell_clip, self.proj_clip = cell_clip, proj_clip
        self.input_linear = nn.Linear(input_dim, 4 * hidden_dim, bias=True)
        self.state_linear = nn.Linear(projection_dim, 4 * hidden_dim, bias=False)
        self.projection = nn.Linear(hidden_dim, projection_dim, bias=False)
        # The state every row starts from unless given one: zeros (the original's cold start) or a
        # fixed "warm" state stored with the model (see ElmoBiLM.set_warm_state).
        self.register_buffer("initial_h", torch.zeros(projection_dim))
        self.register_buffer("initial_c", torch.zeros(hidden_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.input_linear.weight, self.state_linear.weight, self.projection.weight):
            nn.init.uniform_(w, -(w.shape[1] ** -0.5), w.shape[1] ** -0.5)
        with torch.no_grad():
            self.input_linear.bias.zero_()
            self.input_linear.bias[self.hidden_dim : 2 * self.hidden_dim] = 1.0  # forget gate

    def initial_state(self, batch: int) -> State:
        """The stored initial state, broadcast to ``batch`` rows (float32)."""
        return (self.initial_h.float().expand(batch, -1), self.initial_c.float().expand(batch, -1))

    @torch.no_grad()
    def set_initial_state(self, state: State) -> None:
        """Store one row's state, e.g. ``(h[0], c[0])``, as the initial state of every row."""
        self.initial_h.copy_(state[0].reshape(-1))
        self.initial_c.copy_(state[1].reshape(-1))

    def forward(self, inputs: torch.Tensor, batch_sizes: Sequence[int],
                state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        """Run the packed sequence.

        inputs: (T, B, input_dim), time-major, rows sorted by length (longest first).
        batch_sizes: T non-increasing ints; rows ``>= batch_sizes[t]`` have ended before step t.
        state: initial (h (B, P), c (B, H)) or None for ``initial_state``.
        Returns outputs (T, B, P) (zero past each row's end; float32) and the final state of every
        row (its state after its own last step).
        """
        T, B, _ = inputs.shape
        H, P = self.hidden_dim, self.projection_dim
        if state is None:
            state = self.initial_state(B)
        h, c = state[0].float(), state[1].float()
        if T == 0:
            return inputs.new_zeros((0, B, P), dtype=torch.float32), (h, c)
        w_h = self.state_linear.weight.t()  # (P, 4H)
        w_p = self.projection.weight.t()  # (H, P)
        mm_dtype = w_h.dtype
        x_proj = self.input_linear(inputs.to(mm_dtype))  # (T, B, 4H): all steps in one matmul

        ended_h, ended_c, outputs = [], [], []
        for t in range(T):
            n = batch_sizes[t]
            if n < h.shape[0]:  # rows n.. have finished: keep their final state aside
                ended_h.append(h[n:])
                ended_c.append(c[n:])
                h, c = h[:n], c[:n]
            gates = torch.addmm(x_proj[t, :n], h.to(mm_dtype), w_h).float()  # (n, 4H)
            sig = torch.sigmoid(gates[:, : 3 * H])
            i, f, o = sig[:, :H], sig[:, H : 2 * H], sig[:, 2 * H :]
            c = torch.addcmul(f * c, i, torch.tanh(gates[:, 3 * H :]))  # (n, H)
            if self.cell_clip is not None:
                c = c.clamp(-self.cell_clip, self.cell_clip)
            h = torch.mm((o * torch.tanh(c)).to(mm_dtype), w_p).float()  # (n, P)
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)

        ended_h.append(h)
        ended_c.append(c)
        final = (torch.cat(ended_h[::-1], 0), torch.cat(ended_c[::-1], 0)) if len(ended_h) > 1 else (h, c)
        if batch_sizes[-1] == B:
            out = torch.stack(outputs)  # (T, B, P)
        else:
            out = torch.stack([nn.functional.pad(o_t, (0, 0, 0, B - o_t.shape[0])) for o_t in outputs])
        return out, final


def batch_sizes_from_lengths(lengths: Sequence[int]) -> list[int]:
    """Sorted (non-increasing) row lengths -> rows still running at each step."""
    T = lengths[0] if len(lengths) else 0
    sizes, n = [], len(lengths)
    for t in range(T):
        while n and lengths[n - 1] <= t:
            n -= 1
        sizes.append(n)
    return sizes
