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
matmuls over all steps at once instead of one small outer product per step. The skinny per-step
products run through oneDNN (or MKL) kernels with prepared weights where torch has them
(``_Products``; ``ELMO_GEMM=onednn|mkl|plain`` overrides the choice).
"""

from __future__ import annotations

import os
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
        if state is None:
            state = self.initial_state(inputs.shape[1])
        return run_lstm([self], [inputs], batch_sizes, [state])[0]


def bidirectional_lstm(fwd: LstmProjection, bwd: LstmProjection, x_fwd: torch.Tensor,
                       x_bwd: torch.Tensor, batch_sizes: Sequence[int], state_fwd: State,
                       state_bwd: State) -> list[tuple[torch.Tensor, State]]:
    """Both directions of one biLM layer in one loop: equal to ``[fwd(x_fwd, ...), bwd(x_bwd, ...)]``
    with half the per-step operations (the directions share ``batch_sizes``: the backward one
    runs on rows reversed within their lengths)."""
    return run_lstm([fwd, bwd], [x_fwd, x_bwd], batch_sizes, [state_fwd, state_bwd])


def run_lstm(layers: Sequence[LstmProjection], inputs: Sequence[torch.Tensor],
             batch_sizes: Sequence[int], states: Sequence[State]) -> list[tuple[torch.Tensor, State]]:
    """Run D = len(layers) independent LSTM layers over inputs (T, B, in) with one time loop.

    Returns, per layer, outputs (T, B, P) and the final state. With gradients the hand-written
    backward is used; without, the recurrent weights are prepared (packed) once and reused
    across calls while they do not change.
    """
    first, D = layers[0], len(layers)
    T, B, _ = inputs[0].shape
    H4, mm_dt = 4 * first.hidden_dim, first.state_weight.dtype
    sdt = torch.promote_types(mm_dt, torch.float32)  # state and outputs: float32 (or float64)
    h0 = torch.stack([st[0] for st in states]).to(sdt)  # (D, B, P)
    c0 = torch.stack([st[1] for st in states]).to(sdt)  # (D, B, H)
    if T == 0:
        empty = inputs[0].new_zeros((0, B, first.projection_dim), dtype=sdt)
        return [(empty, (h0[d], c0[d])) for d in range(D)]
    sizes = tuple(int(n) for n in batch_sizes)
    clips = (first.cell_clip, first.proj_clip)
    params = [p for layer in layers for p in layer.parameters()]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *inputs, h0, c0)):
        x = torch.stack(inputs).to(mm_dt).reshape(D, T * B, first.input_dim)
        w_x = torch.stack([layer.input_weight for layer in layers]).to(mm_dt)  # (D, in, 4H)
        bias = torch.stack([layer.effective_bias() for layer in layers]).to(mm_dt).unsqueeze(1)
        x_proj = torch.baddbmm(bias, x, w_x).view(D, T, B, H4)  # all steps in one matmul
        w_h = torch.stack([layer.state_weight for layer in layers])  # (D, P, 4H)
        w_p = torch.stack([layer.projection_weight for layer in layers])  # (D, H, P)
        # Under autocast the input projection above may run in reduced precision; the recurrence
        # runs in the weights' dtype (recasting W_h at every step would cost more than it saves).
        with torch.autocast(h0.device.type, enabled=False):
            out, h, c = _LstmRecurrence.apply(x_proj.to(mm_dt), h0, c0, w_h, w_p, sizes, *clips)
    else:
        with torch.autocast(h0.device.type, enabled=False):  # inference: the weights' dtype
            x_proj = torch.empty((D, T * B, H4), dtype=mm_dt, device=h0.device)
            for d, (layer, x) in enumerate(zip(layers, inputs)):  # all steps in one matmul each
                torch.addmm(layer.effective_bias().to(mm_dt), x.reshape(T * B, layer.input_dim).to(mm_dt),
                            layer.input_weight.to(mm_dt), out=x_proj[d])
            gates_mm, proj_mm = _cached_products(layers, B)
            out, h, c, _ = _recurrence(x_proj.view(D, T, B, H4), h0, c0, gates_mm, proj_mm, sizes,
                                       *clips, save=False)
    return [(out[d], (h[d], c[d])) for d in range(D)]


def _cached_products(layers: Sequence[LstmProjection], rows: int) -> tuple["_Products", "_Products"]:
    """The recurrent products for inference, kept on the first layer until a weight changes."""
    weights = [w for layer in layers for w in (layer.state_weight, layer.projection_weight)]
    key = (rows, tuple(id(layer) for layer in layers),
           tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights))
    cached = layers[0].__dict__.get("_products_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    products = (_Products([layer.state_weight.detach() for layer in layers], rows),
                _Products([layer.projection_weight.detach() for layer in layers], rows))
    layers[0].__dict__["_products_cache"] = (key, products)
    return products


def _gemm_backend(w: torch.Tensor) -> str:
    """Which library runs the per-step products with weight ``w``: "onednn", "mkl" or "plain".

    ``ELMO_GEMM=onednn|mkl|plain`` forces one (``ELMO_NO_PACKED_GEMM=1`` = plain); the default
    prefers oneDNN, then MKL, where torch has them (CPU, float32; oneDNN also bfloat16).
    """
    choice = os.environ.get("ELMO_GEMM", "auto").lower()
    if choice not in ("auto", "onednn", "mkl", "plain"):
        raise ValueError(f"ELMO_GEMM={choice!r}: expected auto, onednn, mkl or plain")
    if os.environ.get("ELMO_NO_PACKED_GEMM") or choice == "plain" or w.device.type != "cpu":
        return "plain"
    onednn = w.dtype in (torch.float32, torch.bfloat16) and _onednn_works(w.dtype)
    mkl = (w.dtype == torch.float32 and torch.backends.mkl.is_available()
           and hasattr(torch.ops.mkl, "_mkl_linear"))
    if onednn and choice in ("auto", "onednn"):
        return "onednn"
    if mkl and choice in ("auto", "mkl"):
        return "mkl"
    return "plain"


_ONEDNN_WORKS: dict = {}


def _onednn_works(dtype: torch.dtype) -> bool:
    """Whether this torch build runs oneDNN's prepared-weight linear for ``dtype`` on this CPU:
    checked once per process on a tiny product against ``mm`` (a build may list the ops and
    still lack a kernel, e.g. on some ARM machines); otherwise MKL or plain products are used."""
    if dtype not in _ONEDNN_WORKS:
        ok = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
        if ok:
            try:
                x = torch.arange(6, dtype=torch.float32).view(2, 3).to(dtype)
                w = torch.arange(12, dtype=torch.float32).view(4, 3).to(dtype)  # (N, K)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
                y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
                ok = bool(torch.equal(y.float(), (x.float() @ w.float().t())))
            except (RuntimeError, NotImplementedError):
                ok = False
        _ONEDNN_WORKS[dtype] = ok
    return _ONEDNN_WORKS[dtype]


class _Products:
    """``x @ W_d`` for each direction d.

    ``weights`` is either a stacked (D, K, N) tensor or a list of D (K, N) tensors (the
    parameters themselves: no copy). The skinny (rows, K) @ (K, N) products of a time step are
    where plain ``mm`` is weakest, so on CPU each W_d is prepared once for a library kernel:

    * oneDNN (``torch.ops.mkldnn``, the kernels inductor uses for frozen linears): with ``pack``
      the weight is reordered once into oneDNN's blocked layout (any row count can use it); without
      ``pack`` it is used as it is when its (N, K) layout is a free view (a transposed weight, as
      in the backward pass). On the development machines at 32 rows, (32, 512) @ (512, 16384):
      AMD EPYC (Zen 4) 3.0 ms packed vs 9.5 ms ``mm``, float32, 2 threads; bfloat16 1.4 vs 2.2 ms.
    * MKL (``_mkl_reorder_linear_weight``): packed for exactly ``rows`` rows, other row counts
      use the plain product; on an Intel Xeon about 1.5x faster than ``mm`` for the same product.

    ``fixed_rows`` says whether the prepared kernel only serves ``rows`` rows (MKL).
    """

    def __init__(self, weights, rows: int, pack: bool = True) -> None:
        self.weights, self.rows, self.kind, self.prepared = weights, rows, "plain", None
        first = weights[0]
        self.dtype = first.dtype
        backend = _gemm_backend(first)
        if backend == "onednn":
            linear = [w.t() for w in weights]  # (N, K), the nn.Linear layout
            if pack and rows > 0:
                self.prepared = [torch.ops.mkldnn._reorder_linear_weight(lw.contiguous(), rows)
                                 for lw in linear]
                self.kind = "onednn"
            elif all(lw.is_contiguous() for lw in linear):
                self.prepared, self.kind = linear, "onednn"
        elif backend == "mkl" and pack and rows > 0:
            linear = [w.t().contiguous() for w in weights]
            self.prepared = [(torch.ops.mkl._mkl_reorder_linear_weight(lw, rows), lw) for lw in linear]
            self.kind = "mkl"

    @property
    def fixed_rows(self) -> bool:
        return self.kind == "mkl"

    def __call__(self, x: torch.Tensor, add: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (D, r, K) [+ add (D, r, N)] -> (D, r, N)."""
        if self.kind == "onednn":
            ys = [torch.ops.mkldnn._linear_pointwise(x[d], w, None, "none", [], "")
                  for d, w in enumerate(self.prepared)]
        elif self.kind == "mkl" and x.shape[1] == self.rows:
            ys = [torch.ops.mkl._mkl_linear(x[d], pw, lw, None, self.rows)
                  for d, (pw, lw) in enumerate(self.prepared)]
        elif isinstance(self.weights, torch.Tensor):
            w = self.weights.to(x.dtype)
            return torch.baddbmm(add, x, w) if add is not None else torch.bmm(x, w)
        else:
            ys = [torch.mm(x[d], w.to(x.dtype)) for d, w in enumerate(self.weights)]
        y = torch.stack(ys) if len(ys) > 1 else ys[0].unsqueeze(0)
        return y.add_(add) if add is not None else y


def _recurrence(x_proj, h0, c0, gates_mm, proj_mm, batch_sizes, cell_clip, proj_clip, save: bool):
    """The time loop: x_proj (D, T, B, 4H) holds x W_x + b; h0 (D, B, P), c0 (D, B, H);
    ``gates_mm`` multiplies by W_h (D, P, 4H), ``proj_mm`` by W_p (D, H, P). Returns out
    (D, T, B, P), h (D, B, P) and c (D, B, H). With ``save``, also returns the gate
    activations (D, T, B, 4H) and clipped cells (D, T, B, H) for the backward pass.

    With MKL-packed weights every step multiplies all B rows (the packed kernel is fast for that
    one row count) and only the running rows' results are kept; otherwise it multiplies only
    the n running rows.
    """
    D, T, B, H4 = x_proj.shape
    H = H4 // 4
    sdt = h0.dtype  # float32 (float64 in gradient checks); the matmuls run in mm_dt
    mm_dt = gates_mm.dtype
    full = gates_mm.fixed_rows
    out = x_proj.new_zeros((D, T, B, h0.shape[-1]), dtype=sdt)
    gates_all = x_proj.new_empty((D, T, B, H4), dtype=sdt) if save else None
    cells_all = x_proj.new_empty((D, T, B, H), dtype=sdt) if save else None
    h, c = h0.clone(), c0.clone()  # (D, B, P), (D, B, H): rows >= n keep their final state
    for t in range(T):
        n = batch_sizes[t]
        if n == 0:
            break
        # With packed weights all B rows are multiplied while most are running (the packed
        # kernel is fast for exactly B rows); the plain product takes over for the tail.
        r = B if full and 4 * n >= 3 * B else n
        gates = gates_mm(h[:, :r].to(mm_dt), x_proj[:, t, :r])  # (D, r, 4H)
        if mm_dt != sdt:
            gates = gates.to(sdt)
        act = gates_all[:, t, :r] if save else gates
        torch.sigmoid(gates[..., : 3 * H], out=act[..., : 3 * H])
        torch.tanh(gates[..., 3 * H :], out=act[..., 3 * H :])
        i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        c_r = torch.addcmul(f * c[:, :r], i, g)
        if cell_clip is not None:
            c_r.clamp_(-cell_clip, cell_clip)
        if save:
            cells_all[:, t, :r] = c_r
        h_r = proj_mm((o * torch.tanh(c_r)).to(mm_dt))  # (D, r, P)
        if proj_clip is not None:
            h_r.clamp_(-proj_clip, proj_clip)
        c[:, :n] = c_r[:, :n]
        h[:, :n] = h_r[:, :n]
        out[:, t, :n] = h_r[:, :n]
    if save:  # rows past their end are not part of the sequence: zero, for the backward pass
        _zero_finished_rows(batch_sizes, gates_all, cells_all)
    return out, h, c, (gates_all, cells_all)


def _zero_finished_rows(batch_sizes: Sequence[int], *buffers: torch.Tensor) -> None:
    """Zero each (D, T, B, ...) buffer at the rows that have ended before step t."""
    B = buffers[0].shape[2]
    for t, n in enumerate(batch_sizes):
        if n < B:
            for buf in buffers:
                buf[:, t, n:] = 0


class _LstmRecurrence(torch.autograd.Function):
    """The recurrence with a hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_h, w_p, batch_sizes, cell_clip, proj_clip):
        if w_h.dtype != h0.dtype:
            raise TypeError("training the LSTM needs float32 (or float64) weights; use "
                            "torch.autocast for reduced precision elsewhere")
        B = x_proj.shape[2]
        # The weights change every training step, so they are prepared once per call (one
        # window). oneDNN's packing pays for itself within a window (ORIGINAL size, AMD EPYC:
        # 45 ms to transpose and reorder W_h, then 3.0 instead of 9.5 ms per step and direction);
        # MKL's did not (167 vs 170 tokens/s on an Intel Xeon), so it is not used here.
        pack = _gemm_backend(w_h) == "onednn"
        products = (_Products(w_h, B, pack=pack), _Products(w_p, B, pack=pack))
        out, h, c, (gates, cells) = _recurrence(x_proj, h0, c0, *products, batch_sizes,
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
        d_gates = gates.new_empty((D, T, B, H4))
        d_h_all = out.new_empty((D, T, B, P))  # gradient at each step's (pre-clip) projection
        _zero_finished_rows(bs, d_gates, d_h_all)
        # d_h W_p^T and d_gates W_h^T against transposed views (oneDNN takes them as they are,
        # in its (N, K) layout); a contiguous copy of W_h^T for MKL costs more (70 ms at the
        # original size) than it saves over the ~20 steps of a window. Nothing here is packed
        # for a fixed row count, so each step multiplies only the n running rows.
        proj_t = _Products(w_p.transpose(1, 2), B, pack=False)
        gates_t = _Products(w_h.transpose(1, 2), B, pack=False)
        for t in reversed(range(T)):
            n = bs[t]
            if n == 0:
                continue
            d_hr = g_out[:, t, :n] + dh[:, :n]
            if proj_clip is not None:
                d_hr = d_hr * (out[:, t, :n].abs() < proj_clip)
            d_h_all[:, t, :n] = d_hr
            dm = proj_t(d_hr)  # (D, n, H)
            act = gates[:, t, :n]
            i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
            c_t = cells[:, t, :n]
            tanh_c = torch.tanh(c_t)
            d_c = dc[:, :n] + dm * o * (1 - tanh_c * tanh_c)
            if cell_clip is not None:
                d_c = d_c * (c_t.abs() < cell_clip)
            c_prev = cells[:, t - 1, :n] if t > 0 else c0[:, :n]
            dg = d_gates[:, t, :n]  # (D, n, 4H), written in place
            torch.mul(d_c * g, i * (1 - i), out=dg[..., :H])
            torch.mul(d_c * c_prev, f * (1 - f), out=dg[..., H : 2 * H])
            torch.mul(dm * tanh_c, o * (1 - o), out=dg[..., 2 * H : 3 * H])
            torch.mul(d_c * i, 1 - g * g, out=dg[..., 3 * H :])
            dc[:, :n] = d_c * f
            dh[:, :n] = gates_t(dg)  # (D, n, P)
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
