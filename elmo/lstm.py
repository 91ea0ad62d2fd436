"""One direction of one biLM layer: an LSTM with cell clipping and an output projection.

This is the cell of the original ELMo (bilm-tf's ``LSTMCell(num_proj=..., cell_clip=...,
proj_clip=...)``; the projection is Sak et al. 2014):

    [i, f, o, g] = x_t W_x + h_{t-1} W_h + b          (W_x: in -> 4H, W_h: P -> 4H)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   clipped to +-cell_clip
    h_t = clip((sigmoid(o) * tanh(c_t)) W_p, +-proj_clip) (W_p: H -> P)

As in the original, 1.0 is added to the forget gate at run time (``FORGET_BIAS``): the stored
bias is the original's, so weight files convert both ways bit for bit.
Gate blocks are stored in the order (i, f, o, g) so one sigmoid covers three of them; the
original stores (i, g, f, o) and the weight loader reorders. Matrices are stored (in, out), as
in the original files: a (rows, P) @ (P, 4H) product with a contiguous right-hand side is about
1.7x faster on CPU than one against a transposed (4H, P) weight.

Sequences are processed "packed": rows are sorted by length (longest first) and step t touches
only the ``batch_sizes[t]`` rows still running, so padding costs nothing and never changes a
row's state. The recurrence runs in ``elmo.kernels`` (a fused loop with a hand-written backward
and prepared GEMMs, the library chosen once by ``LstmKernels(gemm)``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.kernels import LstmKernels

State = tuple[torch.Tensor, torch.Tensor]  # (h (B, P), c (B, H)), float32
FORGET_BIAS = 1.0


class LstmProjection(nn.Module):
    """A single-direction LSTM layer with cell clip, projection and projection clip."""

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None) -> None:
        super().__init__()
        self.input_dim, self.hidden_dim, self.projection_dim = input_dim, hidden_dim, projection_dim
        self.cell_clip, self.proj_clip = cell_clip, proj_clip
        self.input_weight = nn.Parameter(torch.empty(input_dim, 4 * hidden_dim))  # W_x
        self.input_bias = nn.Parameter(torch.empty(4 * hidden_dim))  # b (FORGET_BIAS is added to f)
        self.state_weight = nn.Parameter(torch.empty(projection_dim, 4 * hidden_dim))  # W_h
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        # The state every row starts from unless given one: zeros (the original's cold start) or a
        # fixed "warm" state stored with the model (see ElmoBiLM.set_warm_state).
        self.register_buffer("initial_h", torch.zeros(projection_dim))
        self.register_buffer("initial_c", torch.zeros(hidden_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.input_weight, self.state_weight, self.projection_weight):
            bound = w.shape[0] ** -0.5
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.input_bias)

    def effective_bias(self) -> torch.Tensor:
        """The bias with the forget gate's constant +1.0 added, (4H,)."""
        H = self.hidden_dim
        offset = torch.zeros_like(self.input_bias)
        offset[H : 2 * H] = FORGET_BIAS
        return self.input_bias + offset

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
        Returns outputs (T, B, P) (zero past each row's end; float32, or float64 for float64
        weights) and the final state of every row (its state after its own last step).
        """
        if state is None:
            state = self.initial_state(inputs.shape[1])
        return LstmKernels().run([self], [inputs], batch_sizes, [state])[0]


def batch_sizes_from_lengths(lengths: Sequence[int]) -> list[int]:
    """Sorted (non-increasing) row lengths -> rows still running at each step."""
    T = lengths[0] if len(lengths) else 0
    sizes, n = [], len(lengths)
    for t in range(T):
        while n and lengths[n - 1] <= t:
            n -= 1
        sizes.append(n)
    return sizes
