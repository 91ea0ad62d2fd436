"""One direction of one biLM layer: an LSTM with cell clipping and an output projection.

This is the cell of the original ELMo (bilm-tf's ``LSTMCell(num_proj=..., cell_clip=...,
proj_clip=...)``; Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000 and the
projection of Sak et al. 2014):

    [i, f, o, g] = x_t W_x + r_{t-1} W_h + b          (W_x: in -> 4H, W_h: P -> 4H)
    c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g),   clipped to +-cell_clip
    h_t = clip((sigmoid(o) * tanh(c_t)) W_p, +-proj_clip) (W_p: H -> P)

with r_{t-1} = h_{t-1} (after the variational mask and the deep transition when configured;
see ``elmo.cells``). As in the original, 1.0 is added to the forget gate at run time
(``FORGET_BIAS``): the stored bias is the original's, so weight files convert both ways bit for
bit. Gate blocks are stored in the order (i, f, o, g) so one sigmoid covers three of them; the
original stores (i, g, f, o) and the weight loader reorders. Matrices are stored (in, out), as
in the original files: a (rows, P) @ (P, 4H) product with a contiguous right-hand side is
faster on CPU than one against a transposed (4H, P) weight.

``Lstm.step`` is the readable form: the packed loop of every stepped cell
(``elmo.cells.base.SteppedLayer``) runs it one time step at a time, for the n rows still running
(rows are sorted by length, so padding costs nothing and never changes a row's state). It runs
with a deep transition, in the peephole and CIFG variants, and under ``torch.compile``. The
original cell (``runs_fused``: no deep transition; any recurrent regularizer) computes the same
function through ``elmo.kernels`` instead: a fused loop over both directions with a hand-written
backward and prepared GEMMs, with the same dropout masks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.cells.base import SteppedLayer
from elmo.cells.regularizers import DropoutMasks
from elmo.kernels import LstmKernels

State = tuple[torch.Tensor, torch.Tensor]  # (h (B, P), c (B, H)), float32
FORGET_BIAS = 1.0


def forget_bias_added(bias: torch.Tensor, block: int, size: int) -> torch.Tensor:
    """``bias`` with FORGET_BIAS added to entries [block * size, (block + 1) * size)."""
    offset = torch.zeros_like(bias)
    offset[block * size : (block + 1) * size] = FORGET_BIAS
    return bias + offset


class Lstm(SteppedLayer):
    """A single-direction LSTM layer with cell clip, projection and projection clip.

    State: (h (B, P), c (B, H)). Semeniuta dropout acts on tanh(g); zoneout on h and c.
    """

    state_names = ("h", "c")
    n_gates = 4  # blocks of H in the input and state products (i, f, o, g)
    forget_block = 1  # the block that gets FORGET_BIAS at run time, as in the original

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
                 **options) -> None:
        super().__init__(input_dim, hidden_dim, projection_dim, (projection_dim, hidden_dim),
                         recurrent_dim=projection_dim, update_dim=hidden_dim,
                         cell_clip=cell_clip, proj_clip=proj_clip, **options)
        G = self.n_gates * hidden_dim
        self.input_weight = nn.Parameter(torch.empty(input_dim, G))  # W_x
        self.input_bias = nn.Parameter(torch.empty(G))  # b (FORGET_BIAS is added to f)
        self.state_weight = nn.Parameter(torch.empty(projection_dim, G))  # W_h
        self.projection_weight = nn.Parameter(torch.empty(hidden_dim, projection_dim))  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_uniform(self.input_weight, self.state_weight, self.projection_weight)
        nn.init.zeros_(self.input_bias)
        self.reset_transition()

    @property
    def runs_fused(self) -> bool:
        """Whether ``elmo.kernels.LstmKernels`` computes this layer: the original cell with no
        deep transition, with or without a recurrent regularizer (the kernels apply the same
        masks). Variants that change ``step`` say False."""
        return len(self.transition_weights) == 0

    def effective_bias(self) -> torch.Tensor:
        """The stored bias with FORGET_BIAS added to the forget gate's block, (G,)."""
        return forget_bias_added(self.input_bias, self.forget_block, self.hidden_dim)

    def forward(self, inputs: torch.Tensor, batch_sizes: Sequence[int], state: Optional[State] = None,
                masks: Optional[DropoutMasks] = None) -> tuple[torch.Tensor, State]:
        """Run the packed sequence.

        inputs: (T, B, input_dim), time-major, rows sorted by length (longest first).
        batch_sizes: T non-increasing ints; rows ``>= batch_sizes[t]`` have ended before step t.
        state: initial (h (B, P), c (B, H)) or None for ``initial_state``.
        Returns outputs (T, B, P) (zero past each row's end; float32, or float64 for float64
        weights) and the final state of every row (its state after its own last step).
        """
        if not self.runs_fused or torch.compiler.is_compiling():  # (see LstmKernels.fuses)
            return super().forward(inputs, batch_sizes, state, masks)
        state = self._start(inputs, batch_sizes, state)
        return LstmKernels().run([self], [inputs], batch_sizes, [state], [masks])[0]

    # -- the step, for the packed loop of elmo.cells.base -----------------------------------------
    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.input_weight, self.effective_bias())  # (T, B, G): one matmul

    def gates(self, xp: torch.Tensor, h: torch.Tensor, state_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t W_x + b + r_{t-1} W_h: (n, G)."""
        r = self.recurrent_input(h, state_mask)
        return self.addmm(xp, r, self.state_weight)

    def output(self, o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h_t = clip((o * tanh(c_t)) W_p): (n, P)."""
        return self.project(o * torch.tanh(c))

    def step(self, xp, state, state_mask, update_mask):
        h, c = state
        H = self.hidden_dim
        gates = self.gates(xp, h, state_mask)  # (n, 4H)
        sig = torch.sigmoid(gates[:, : 3 * H])
        i, f, o = sig[:, :H], sig[:, H : 2 * H], sig[:, 2 * H :]
        g = torch.tanh(gates[:, 3 * H :])
        if update_mask is not None:
            g = g * update_mask  # Semeniuta: dropout on the candidate only
        c = self.clip_cell(torch.addcmul(f * c, i, g))  # (n, H)
        return self.output(o, c), c

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        return seq  # h_t is already the projected output


LstmProjection = Lstm  # the name of the original cell before the other cells shared this class


def batch_sizes_from_lengths(lengths: Sequence[int]) -> list[int]:
    """Sorted (non-increasing) row lengths -> rows still running at each step."""
    T = lengths[0] if len(lengths) else 0
    sizes, n = [], len(lengths)
    for t in range(T):
        while n and lengths[n - 1] <= t:
            n -= 1
        sizes.append(n)
    return sizes
