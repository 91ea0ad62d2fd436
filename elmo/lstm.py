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

Speed: ``x W_x + b`` for every time step is one large matmul before the loop; each step then does
one (rows, P) @ (P, 4H) and one (rows, H) @ (H, P) product and a few element-wise ops, writing
into preallocated buffers. Sequences are processed "packed": rows are sorted by length (longest
first) and step t touches only the ``batch_sizes[t]`` rows still running, so padding costs
nothing and never changes a row's state. For training, ``_LstmRecurrence`` has a hand-written
backward pass: the per-step work is two skinny matmuls, and the weight gradients are three large
matmuls over all steps at once instead of one small outer product per step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

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
        T, B, _ = inputs.shape
        if state is None:
            state = self.initial_state(B)
        w = self.state_weight
        state_dtype = torch.promote_types(w.dtype, torch.float32)
        h0, c0 = state[0].to(state_dtype), state[1].to(state_dtype)
        if T == 0:
            return inputs.new_zeros((0, B, self.projection_dim), dtype=state_dtype), (h0, c0)
        x = inputs.to(w.dtype).reshape(T * B, inputs.shape[-1])
        x_proj = torch.addmm(self.effective_bias().to(w.dtype), x, self.input_weight.to(w.dtype))
        x_proj = x_proj.view(T, B, 4 * self.hidden_dim)  # all steps in one matmul
        out, h, c = run_recurrence(x_proj.unsqueeze(0), h0.unsqueeze(0), c0.unsqueeze(0),
                                   w.unsqueeze(0), self.projection_weight.unsqueeze(0),
                                   batch_sizes, self.cell_clip, self.proj_clip)
        return out[0], (h[0], c[0])


def bidirectional_lstm(fwd: LstmProjection, bwd: LstmProjection, x_fwd: torch.Tensor,
                       x_bwd: torch.Tensor, batch_sizes: Sequence[int], state_fwd: State,
                       state_bwd: State) -> tuple[tuple[torch.Tensor, State], tuple[torch.Tensor, State]]:
    """Both directions of one biLM layer in one loop: equal to ``fwd(x_fwd, ...)`` and
    ``bwd(x_bwd, ...)``, with one batched matmul per step for the two (the weights are stacked
    per call: a copy that is small next to the loop)."""
    T, B, _ = x_fwd.shape
    mm_dt = fwd.state_weight.dtype
    sdt = torch.promote_types(mm_dt, torch.float32)
    h0 = torch.stack([state_fwd[0], state_bwd[0]]).to(sdt)  # (2, B, P)
    c0 = torch.stack([state_fwd[1], state_bwd[1]]).to(sdt)  # (2, B, H)
    if T == 0:
        empty = x_fwd.new_zeros((0, B, fwd.projection_dim), dtype=sdt)
        return (empty, (h0[0], c0[0])), (empty, (h0[1], c0[1]))
    bias = torch.stack([fwd.effective_bias(), bwd.effective_bias()]).to(mm_dt).unsqueeze(1)
    x = torch.stack([x_fwd, x_bwd]).to(mm_dt).reshape(2, T * B, x_fwd.shape[-1])
    w_x = torch.stack([fwd.input_weight, bwd.input_weight]).to(mm_dt)  # (2, in, 4H)
    x_proj = torch.baddbmm(bias, x, w_x).view(2, T, B, 4 * fwd.hidden_dim)  # both directions
    w_h = torch.stack([fwd.state_weight, bwd.state_weight])  # (2, P, 4H)
    w_p = torch.stack([fwd.projection_weight, bwd.projection_weight])  # (2, H, P)
    out, h, c = run_recurrence(x_proj, h0, c0, w_h, w_p, batch_sizes, fwd.cell_clip, fwd.proj_clip)
    return (out[0], (h[0], c[0])), (out[1], (h[1], c[1]))


def run_recurrence(x_proj, h0, c0, w_h, w_p, batch_sizes, cell_clip, proj_clip):
    """The LSTM time loop for D independent directions at once (D = 1 or 2).

    x_proj (D, T, B, 4H) holds x W_x + b; h0 (D, B, P), c0 (D, B, H); w_h (D, P, 4H),
    w_p (D, H, P). Returns out (D, T, B, P), h (D, B, P), c (D, B, H). The directions share
    ``batch_sizes`` (the backward direction runs on rows reversed within their lengths), so one
    batched matmul per step serves both. Uses the hand-written backward when gradients are needed.
    """
    sizes = tuple(int(n) for n in batch_sizes)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, h0, c0, w_h, w_p)):
        return _LstmRecurrence.apply(x_proj, h0, c0, w_h, w_p, sizes, cell_clip, proj_clip)
    out, h, c, _ = _recurrence(x_proj, h0, c0, w_h, w_p, sizes, cell_clip, proj_clip, save=False)
    return out, h, c


def _recurrence(x_proj, h0, c0, w_h, w_p, batch_sizes, cell_clip, proj_clip, save: bool):
    """The time loop (see ``run_recurrence`` for shapes). With ``save``, also returns the gate
    activations (D, T, B, 4H) and clipped cells (D, T, B, H) for the backward pass."""
    D, T, B, H4 = x_proj.shape
    H = H4 // 4
    sdt = h0.dtype  # float32 (float64 in gradient checks); the matmuls run in w_h.dtype
    mm_dt = w_h.dtype
    out = x_proj.new_zeros((D, T, B, w_p.shape[-1]), dtype=sdt)
    gates_all = x_proj.new_zeros((D, T, B, H4), dtype=sdt) if save else None
    cells_all = x_proj.new_zeros((D, T, B, H), dtype=sdt) if save else None
    h, c = h0.clone(), c0.clone()  # (D, B, P), (D, B, H): rows >= n keep their final state
    for t in range(T):
        n = batch_sizes[t]
        if n == 0:
            break
        gates = torch.baddbmm(x_proj[:, t, :n], h[:, :n].to(mm_dt), w_h)  # (D, n, 4H)
        if mm_dt != sdt:
            gates = gates.to(sdt)
        act = gates_all[:, t, :n] if save else gates
        torch.sigmoid(gates[..., : 3 * H], out=act[..., : 3 * H])
        torch.tanh(gates[..., 3 * H :], out=act[..., 3 * H :])
        i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        c_n = torch.addcmul(f * c[:, :n], i, g)
        if cell_clip is not None:
            c_n.clamp_(-cell_clip, cell_clip)
        c[:, :n] = c_n
        if save:
            cells_all[:, t, :n] = c_n
        m = o * torch.tanh(c_n)  # (D, n, H)
        h_n = torch.bmm(m.to(mm_dt), w_p)  # (D, n, P)
        if proj_clip is not None:
            h_n.clamp_(-proj_clip, proj_clip)
        out[:, t, :n] = h_n
        h[:, :n] = h_n
    return out, h, c, (gates_all, cells_all)


class _LstmRecurrence(torch.autograd.Function):
    """The recurrence with a hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_h, w_p, batch_sizes, cell_clip, proj_clip):
        if w_h.dtype != h0.dtype:
            raise TypeError("training the LSTM needs float32 (or float64) weights; use "
                            "torch.autocast for reduced precision elsewhere")
        out, h, c, (gates, cells) = _recurrence(x_proj, h0, c0, w_h, w_p, batch_sizes,
                                                cell_clip, proj_clip, save=True)
        ctx.save_for_backward(h0, c0, w_h, w_p, out, gates, cells)
        ctx.batch_sizes, ctx.cell_clip, ctx.proj_clip = batch_sizes, cell_clip, proj_clip
        ctx.x_dtype = x_proj.dtype
        return out, h, c

    @staticmethod
    def backward(ctx, g_out, g_h, g_c):
        h0, c0, w_h, w_p, out, gates, cells = ctx.saved_tensors
        bs, cell_clip, proj_clip = ctx.batch_sizes, ctx.cell_clip, ctx.proj_clip
        D, T, B, H4 = gates.shape
        H, P = H4 // 4, out.shape[-1]
        dt = out.dtype
        dh = g_h.to(dt).clone() if g_h is not None else h0.new_zeros((D, B, P))
        dc = g_c.to(dt).clone() if g_c is not None else c0.new_zeros((D, B, H))
        g_out = g_out.to(dt) if g_out is not None else out.new_zeros(out.shape)
        d_gates = gates.new_zeros((D, T, B, H4))
        d_h_all = out.new_zeros((D, T, B, P))  # gradient at each step's (pre-clip) projection
        # Contiguous transposes: a product against a transposed view is much slower on CPU.
        w_p_t, w_h_t = w_p.transpose(1, 2).contiguous(), w_h.transpose(1, 2).contiguous()
        for t in reversed(range(T)):
            n = bs[t]
            if n == 0:
                continue
            d_hn = g_out[:, t, :n] + dh[:, :n]
            if proj_clip is not None:
                d_hn = d_hn * (out[:, t, :n].abs() < proj_clip)
            d_h_all[:, t, :n] = d_hn
            dm = torch.bmm(d_hn, w_p_t)  # (D, n, H)
            act = gates[:, t, :n]
            i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
            c_t = cells[:, t, :n]
            tanh_c = torch.tanh(c_t)
            d_c = dc[:, :n] + dm * o * (1 - tanh_c * tanh_c)
            if cell_clip is not None:
                d_c = d_c * (c_t.abs() < cell_clip)
            c_prev = cells[:, t - 1, :n] if t > 0 else c0[:, :n]
            dg = d_gates[:, t, :n]
            torch.mul(d_c * g, i * (1 - i), out=dg[..., :H])
            torch.mul(d_c * c_prev, f * (1 - f), out=dg[..., H : 2 * H])
            torch.mul(dm * tanh_c, o * (1 - o), out=dg[..., 2 * H : 3 * H])
            torch.mul(d_c * i, 1 - g * g, out=dg[..., 3 * H :])
            dc[:, :n] = d_c * f
            dh[:, :n] = torch.bmm(dg, w_h_t)  # (D, n, P)
        # Weight gradients: one large matmul each, over all steps (inactive rows are zero).
        h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1).reshape(D, T * B, P)
        d_w_h = torch.bmm(h_prev.transpose(1, 2), d_gates.reshape(D, T * B, H4))  # (D, P, 4H)
        m_all = gates[..., 2 * H : 3 * H] * torch.tanh(cells)  # (D, T, B, H)
        d_w_p = torch.bmm(m_all.reshape(D, T * B, H).transpose(1, 2),
                          d_h_all.reshape(D, T * B, P))  # (D, H, P)
        return d_gates.to(ctx.x_dtype), dh, dc, d_w_h, d_w_p, None, None, None


def batch_sizes_from_lengths(lengths: Sequence[int]) -> list[int]:
    """Sorted (non-increasing) row lengths -> rows still running at each step."""
    T = lengths[0] if len(lengths) else 0
    sizes, n = [], len(lengths)
    for t in range(T):
        while n and lengths[n - 1] <= t:
            n -= 1
        sizes.append(n)
    return sizes
