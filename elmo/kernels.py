"""The fast path of the original LSTM cell: a fused recurrence with a hand-written backward, and the
library that runs its skinny per-step products.

``elmo.lstm`` states the cell's equations and runs them step by step; this module computes the
same function faster for the case that dominates ELMo (the original cell with no deep
transition), for any number of independent layers at once (both directions of a biLM layer share
one time loop), with or without a recurrent regularizer of ``elmo.cells.regularizers`` (the same
masks the step loop would draw, applied inside the loop and its backward):

* ``x W_x + b`` for every time step is one large matmul before the loop; each step then does one
  (rows, P) @ (P, 4H) and one (rows, H) @ (H, P) product and a few element-wise ops, writing
  into preallocated buffers. Only the ``batch_sizes[t]`` rows still running are touched.
* ``_LstmRecurrence`` has a hand-written backward pass: the per-step work is two skinny matmuls,
  and the weight gradients are three large matmuls over all steps at once instead of one small
  outer product per step.
* The skinny products run through a GEMM library with the weight prepared for it (``Products``):
  oneDNN's blocked layout (the kernels inductor uses for frozen linears) or MKL's packed GEMM,
  where torch has them; ``plain`` is ``torch.mm``.

The library is chosen once, by ``LstmKernels(gemm)`` (``BiLM(config, gemm=...)``,
``BiLM.set_gemm``): ``auto`` (oneDNN, else MKL, else plain), ``onednn``, ``mkl`` or ``plain``.
The default comes from the environment variable ``ELMO_GEMM``, read once per process. Prepared
kernels are CPU kernels: tensors on any other device (CUDA) always use plain products, in the
same fused recurrence.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import torch

from elmo.cells.regularizers import DropoutMasks

GEMMS = ("auto", "onednn", "mkl", "plain")


def check_gemm(choice: str, source: str = "gemm") -> str:
    """``choice`` lower-cased, or a ValueError that names ``source`` and the valid choices."""
    value = str(choice).lower()
    if value not in GEMMS:
        raise ValueError(f"{source}={choice!r}: expected {', '.join(GEMMS[:-1])} or {GEMMS[-1]}")
    return value


def gemm_from_environment(environ: Mapping[str, str]) -> str:
    """The choice ``ELMO_GEMM`` makes in ``environ`` (``auto`` when unset)."""
    return check_gemm(environ.get("ELMO_GEMM", "auto"), "ELMO_GEMM")


@functools.lru_cache(maxsize=None)
def default_gemm() -> str:
    """The process-wide default: ``ELMO_GEMM``, read the first time it is needed."""
    return gemm_from_environment(os.environ)


@functools.lru_cache(maxsize=None)
def onednn_works(dtype: torch.dtype) -> bool:
    """Whether this torch build runs oneDNN's prepared-weight linear for ``dtype`` on this CPU:
    checked once per process on a tiny product against ``mm`` (a build may list the ops and
    still lack a kernel, e.g. on some ARM machines); otherwise MKL or plain products are used."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        x = torch.arange(6, dtype=torch.float32).view(2, 3).to(dtype)
        w = torch.arange(12, dtype=torch.float32).view(4, 3).to(dtype)  # (N, K)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.equal(y.float(), (x.float() @ w.float().t())))
    except (RuntimeError, NotImplementedError):
        return False


def resolve_gemm(choice: str, device: torch.device, dtype: torch.dtype) -> str:
    """The library that runs products with a weight on ``device`` in ``dtype`` under ``choice``:
    "onednn", "mkl" or "plain". The prepared kernels are CPU kernels: any other device is plain."""
    if torch.device(device).type != "cpu" or choice == "plain":
        return "plain"
    onednn = dtype in (torch.float32, torch.bfloat16) and onednn_works(dtype)
    mkl = (dtype == torch.float32 and torch.backends.mkl.is_available()
           and hasattr(torch.ops.mkl, "_mkl_linear"))
    if onednn and choice in ("auto", "onednn"):
        return "onednn"
    if mkl and choice in ("auto", "mkl"):
        return "mkl"
    return "plain"


class Products:
    """``x @ W_d`` for each direction d, through the library ``gemm`` (a ``resolve_gemm`` result).

    ``weights`` is either a stacked (D, K, N) tensor or a list of D (K, N) tensors (the
    parameters themselves: no copy). The skinny (rows, K) @ (K, N) products of a time step are
    where plain ``mm`` is weakest, so each W_d is prepared once for a library kernel:

    * oneDNN (``torch.ops.mkldnn``): with ``pack`` the weight is reordered once into oneDNN's
      blocked layout (any row count can use it); without ``pack`` it is used as it is when its
      (N, K) layout is a free view (a transposed weight, as in the backward pass).
    * MKL (``_mkl_reorder_linear_weight``): packed for exactly ``rows`` rows, other row counts
      use the plain product.

    ``fixed_rows`` says whether the prepared kernel only serves ``rows`` rows (MKL).
    """

    def __init__(self, weights, rows: int, gemm: str, pack: bool = True) -> None:
        self.weights, self.rows, self.kind, self.prepared = weights, rows, "plain", None
        self.dtype = weights[0].dtype
        if gemm == "onednn":
            linear = [w.t() for w in weights]  # (N, K), the nn.Linear layout
            if pack and rows > 0:
                self.prepared = [torch.ops.mkldnn._reorder_linear_weight(lw.contiguous(), rows)
                                 for lw in linear]
                self.kind = "onednn"
            elif all(lw.is_contiguous() for lw in linear):
                self.prepared, self.kind = linear, "onednn"
        elif gemm == "mkl" and pack and rows > 0:
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


class LstmKernels:
    """Runs D plain LSTM layers (``elmo.lstm.Lstm`` with ``runs_fused``) through the fused
    recurrence, with the per-step products in the GEMM library ``gemm`` (chosen here, once).

    For inference (no gradients) the recurrent weights are prepared for the batch's row count and
    kept for the next call with the same weights and row count. The owner (``BiLM``) drops them
    with ``release()`` when it switches between training and evaluation or loads a state dict;
    this object drops them itself whenever it runs with gradients (an optimizer step may follow).
    After editing weights in place under ``torch.no_grad()``, call ``release()``.
    """

    def __init__(self, gemm: Optional[str] = None) -> None:
        self.gemm = default_gemm() if gemm is None else check_gemm(gemm)
        self._prepared: dict = {}  # per group of layers: (key, (gates_mm, proj_mm)) for inference

    def __repr__(self) -> str:
        return f"LstmKernels(gemm={self.gemm!r})"

    def __getstate__(self) -> dict:  # copies and pickles carry the choice, not prepared weights
        return {"gemm": self.gemm, "_prepared": {}}

    def gemm_for(self, weight: torch.Tensor) -> str:
        """The library that runs products with ``weight``: "onednn", "mkl" or "plain"."""
        return resolve_gemm(self.gemm, weight.device, weight.dtype)

    def fuses(self, layers: Sequence) -> bool:
        """Whether ``run`` computes these layers: each says it is the original LSTM cell
        (``runs_fused``) and all have the same sizes, clips, recurrent regularizer (kind, rate and
        training mode) and weight dtype and device. Not under
        ``torch.compile``: the compiler traces the readable step loop of ``elmo.cells`` instead
        (it cannot trace this loop's ``out=`` views or the prepared CPU kernels)."""
        if torch.compiler.is_compiling():
            return False
        if not all(getattr(layer, "runs_fused", False) for layer in layers):
            return False
        signature = {(layer.input_dim, layer.hidden_dim, layer.projection_dim, layer.cell_clip,
                      layer.proj_clip, layer.recurrent_dropout_kind, layer.recurrent_dropout,
                      layer.training, layer.state_weight.dtype, layer.state_weight.device,
                      layer.skips_projection)
                     for layer in layers}
        return len(signature) == 1

    def release(self) -> None:
        """Forget the weights prepared for inference."""
        self._prepared = {}

    def run(self, layers: Sequence, inputs: Sequence[torch.Tensor], batch_sizes: Sequence[int],
            states: Sequence[tuple], masks: Optional[Sequence[Optional[DropoutMasks]]] = None
            ) -> list[tuple[torch.Tensor, tuple]]:
        """D layers over inputs (T, B, in) each, time-major, rows sorted longest first, with initial
        states (h (B, P), c (B, H)). Returns, per layer, outputs (T, B, P) (zero past each row's
        end; float32, or float64 for float64 weights) and the final (h, c) of every row.

        ``masks``: per layer, the recurrent dropout masks to use in training (``DropoutMasks``) or
        None for the layer to draw them (``RecurrentLayer._masks``, layer after layer, as each
        layer's own ``forward`` would: the same random numbers in the same order)."""
        first, D = layers[0], len(layers)
        T, B, _ = inputs[0].shape
        H4, mm_dt = 4 * first.hidden_dim, first.state_weight.dtype
        sdt = torch.promote_types(mm_dt, torch.float32)  # state and outputs: float32 (or float64)
        h0 = torch.stack([st[0] for st in states]).to(sdt)  # (D, B, P)
        c0 = torch.stack([st[1] for st in states]).to(sdt)  # (D, B, H)
        given = [None] * D if masks is None else list(masks)
        drawn = [layer._masks(T, B, m, h0[d]) for d, (layer, m) in enumerate(zip(layers, given))]
        if T == 0:
            empty = inputs[0].new_zeros((0, B, first.projection_dim), dtype=sdt)
            return [(empty, (h0[d], c0[d])) for d in range(D)]
        reg = _Regularizer.of(first, drawn)
        sizes = tuple(int(n) for n in batch_sizes)
        clips = (first.cell_clip, first.proj_clip)
        params = [p for layer in layers for p in layer.parameters()]
        if reg.input is not None:  # variational: one mask per row on the inputs, before W_x
            inputs = [x.to(sdt) * m for x, m in zip(inputs, reg.input)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *inputs, h0, c0)):
            self.release()
            x = torch.stack(inputs).to(mm_dt).reshape(D, T * B, first.input_dim)
            w_x = torch.stack([layer.input_weight for layer in layers]).to(mm_dt)  # (D, in, 4H)
            bias = torch.stack([layer.effective_bias() for layer in layers]).to(mm_dt).unsqueeze(1)
            x_proj = torch.baddbmm(bias, x, w_x).view(D, T, B, H4)  # all steps in one matmul
            w_h = torch.stack([layer.state_weight for layer in layers])  # (D, P, 4H)
            # (D, H, P); None when W_p is the frozen identity (the product is skipped)
            w_p = None if first.skips_projection else \
                torch.stack([layer.projection_weight for layer in layers])
            # Under autocast the input projection above may run in reduced precision; the
            # recurrence runs in the weights' dtype (recasting W_h at every step would cost more
            # than it saves).
            with torch.autocast(h0.device.type, enabled=False):
                out, h, c = _LstmRecurrence.apply(x_proj.to(mm_dt), h0, c0, w_h, w_p, sizes,
                                                  *clips, self.gemm_for(w_h), reg)
        else:
            with torch.autocast(h0.device.type, enabled=False):  # inference: the weights' dtype
                x_proj = torch.empty((D, T * B, H4), dtype=mm_dt, device=h0.device)
                for d, (layer, x) in enumerate(zip(layers, inputs)):  # all steps in one matmul each
                    torch.addmm(layer.effective_bias().to(mm_dt),
                                x.reshape(T * B, layer.input_dim).to(mm_dt),
                                layer.input_weight.to(mm_dt), out=x_proj[d])
                gates_mm, proj_mm = self._inference_products(layers, B)
                out, h, c, _ = _recurrence(x_proj.view(D, T, B, H4), h0, c0, gates_mm, proj_mm,
                                           sizes, *clips, save=False, reg=reg)
        if reg.output is not None:  # variational: one mask per row on the outputs (not the state)
            out = out * reg.output.unsqueeze(1)
        return [(out[d], (h[d], c[d])) for d in range(D)]

    def _inference_products(self, layers: Sequence, rows: int) -> tuple[Products, Optional[Products]]:
        """The recurrent products for inference, prepared once per group of layers and reused
        while the same weight tensors (by storage, shape, dtype and device) run the same row
        count (one entry per group: the latest row count). The projection's is None when W_p is
        the frozen identity."""
        weights = [w for layer in layers for w in (layer.state_weight, layer.projection_weight)]
        group = tuple(id(layer) for layer in layers)
        key = (rows, tuple((w.data_ptr(), w.shape, w.dtype, w.device) for w in weights))
        cached = self._prepared.get(group)
        if cached is not None and cached[0] == key:
            return cached[1]
        gemm = self.gemm_for(weights[0])
        products = (Products([layer.state_weight.detach() for layer in layers], rows, gemm),
                    None if layers[0].skips_projection else
                    Products([layer.projection_weight.detach() for layer in layers], rows, gemm))
        self._prepared[group] = (key, products)
        return products


class _Regularizer(NamedTuple):
    """The recurrent dropout of D layers in one loop, their masks stacked on a leading D axis.

    ``input``, ``output``: variational (D, B, in), (D, B, P), applied around the loop;
    ``state``: variational (D, B, P) on h_{t-1} where it enters the W_h product; ``update``:
    semeniuta (D, T, B, H) on tanh(g); ``zone``: zoneout's weights (w_h, w_c) of
    ``s_t = lerp(s~_t, s_{t-1}, w)``, each (D, T, B, size) in training or the rate p (a float)
    in evaluation."""

    input: Optional[torch.Tensor] = None
    state: Optional[torch.Tensor] = None
    output: Optional[torch.Tensor] = None
    update: Optional[torch.Tensor] = None
    zone: Optional[tuple[Union[torch.Tensor, float], Union[torch.Tensor, float]]] = None

    @staticmethod
    def of(layer, drawn: Sequence[DropoutMasks]) -> "_Regularizer":
        """The masks each layer drew (``layer``: one of them, for the settings they share)."""
        def stack(name):
            parts = [getattr(m, name) for m in drawn]
            return None if any(p is None for p in parts) else torch.stack(parts)

        zone = None
        if layer.recurrent_dropout_kind == "zoneout":
            if all(m.zone is not None for m in drawn):
                zone = tuple(torch.stack([m.zone[k] for m in drawn]) for k in range(2))
            elif not layer.training:  # evaluation: the expectation of the step
                zone = (layer.recurrent_dropout, layer.recurrent_dropout)
        return _Regularizer(stack("input"), stack("state"), stack("output"), stack("update"), zone)


def _at(weight, t: int, rows: int):
    """A zoneout weight at step t for the first ``rows`` rows (a float stays a float)."""
    return weight[:, t, :rows] if isinstance(weight, torch.Tensor) else weight


def _recurrence(x_proj, h0, c0, gates_mm, proj_mm, batch_sizes, cell_clip, proj_clip, save: bool,
                reg: _Regularizer = _Regularizer()):
    """The time loop: x_proj (D, T, B, 4H) holds x W_x + b; h0 (D, B, P), c0 (D, B, H);
    ``gates_mm`` multiplies by W_h (D, P, 4H), ``proj_mm`` by W_p (D, H, P) (None: W_p is the
    identity, H == P, and nothing is multiplied). Returns out
    (D, T, B, P), h (D, B, P) and c (D, B, H). With ``save``, also returns the gate
    activations (D, T, B, 4H) and clipped cells (D, T, B, H) for the backward pass and, with
    zoneout, the step's own output h~ (D, T, B, P) and the zoned cells (D, T, B, H).

    ``reg`` applies the recurrent dropout of the loop: the state mask on h_{t-1} before W_h,
    the update mask on tanh(g), zoneout on h and c after the step (out holds the zoned h).

    With MKL-packed weights every step multiplies all B rows (the packed kernel is fast for that
    one row count) and only the running rows' results are kept; otherwise it multiplies only
    the n running rows.
    """
    D, T, B, H4 = x_proj.shape
    H = H4 // 4
    sdt = h0.dtype  # float32 (float64 in gradient checks); the matmuls run in mm_dt
    mm_dt = gates_mm.dtype
    full = gates_mm.fixed_rows
    P = h0.shape[-1]
    out = x_proj.new_zeros((D, T, B, P), dtype=sdt)
    gates_all = x_proj.new_empty((D, T, B, H4), dtype=sdt) if save else None
    cells_all = x_proj.new_empty((D, T, B, H), dtype=sdt) if save else None
    zoned = save and reg.zone is not None
    own_all = x_proj.new_empty((D, T, B, P), dtype=sdt) if zoned else None  # h~ before zoneout
    kept_all = x_proj.new_empty((D, T, B, H), dtype=sdt) if zoned else None  # c after zoneout
    h, c = h0.clone(), c0.clone()  # (D, B, P), (D, B, H): rows >= n keep their final state
    for t in range(T):
        n = batch_sizes[t]
        if n == 0:
            break
        # With packed weights all B rows are multiplied while most are running (the packed
        # kernel is fast for exactly B rows); the plain product takes over for the tail.
        r = B if full and 4 * n >= 3 * B else n
        h_in = h[:, :r] if reg.state is None else h[:, :r] * reg.state[:, :r]
        gates = gates_mm(h_in.to(mm_dt), x_proj[:, t, :r])  # (D, r, 4H)
        if mm_dt != sdt:
            gates = gates.to(sdt)
        act = gates_all[:, t, :r] if save else gates
        torch.sigmoid(gates[..., : 3 * H], out=act[..., : 3 * H])
        torch.tanh(gates[..., 3 * H :], out=act[..., 3 * H :])
        i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
        if reg.update is not None:  # semeniuta: c_t = f c_{t-1} + i (g m_t)
            g = g * reg.update[:, t, :r]
        c_r = torch.addcmul(f * c[:, :r], i, g)
        if cell_clip is not None:
            c_r.clamp_(-cell_clip, cell_clip)
        if save:
            cells_all[:, t, :r] = c_r
        m_r = o * torch.tanh(c_r)  # (D, r, H)
        h_r = m_r if proj_mm is None else proj_mm(m_r.to(mm_dt))  # (D, r, P)
        if proj_clip is not None:
            h_r.clamp_(-proj_clip, proj_clip)
        if reg.zone is not None:  # zoneout: s_t = lerp(s~_t, s_{t-1}, w_t)
            if zoned:
                own_all[:, t, :r] = h_r
            h_r = torch.lerp(h_r.to(sdt), h[:, :r], _at(reg.zone[0], t, r))
            c_r = torch.lerp(c_r, c[:, :r], _at(reg.zone[1], t, r))
            if zoned:
                kept_all[:, t, :r] = c_r
        c[:, :n] = c_r[:, :n]
        h[:, :n] = h_r[:, :n]
        out[:, t, :n] = h_r[:, :n]
    if save:  # rows past their end are not part of the sequence: zero, for the backward pass
        _zero_finished_rows(batch_sizes, *(b for b in (gates_all, cells_all, own_all, kept_all)
                                           if b is not None))
    return out, h, c, (gates_all, cells_all, own_all, kept_all)


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
    def forward(ctx, x_proj, h0, c0, w_h, w_p, batch_sizes, cell_clip, proj_clip, gemm,
                reg=_Regularizer()):
        if w_h.dtype != h0.dtype:
            raise TypeError("training the LSTM needs float32 (or float64) weights; use "
                            "torch.autocast for reduced precision elsewhere")
        B = x_proj.shape[2]
        # The weights change every training step, so they are prepared once per call (one
        # window). oneDNN's packing pays for itself within a window; MKL's did not, so it is not
        # used here (the plain product runs instead).
        pack = gemm == "onednn"
        products = (Products(w_h, B, gemm, pack=pack),
                    None if w_p is None else Products(w_p, B, gemm, pack=pack))
        out, h, c, (gates, cells, own, kept) = _recurrence(
            x_proj, h0, c0, *products, batch_sizes, cell_clip, proj_clip, save=True, reg=reg)
        ctx.save_for_backward(h0, c0, w_h, w_p, out, gates, cells, own, kept)
        ctx.batch_sizes, ctx.cell_clip, ctx.proj_clip = batch_sizes, cell_clip, proj_clip
        ctx.x_dtype, ctx.gemm = x_proj.dtype, gemm
        ctx.reg = reg._replace(input=None, output=None)  # (those two act outside the loop)
        return out, h, c

    @staticmethod
    def backward(ctx, g_out, g_h, g_c):
        h0, c0, w_h, w_p, out, gates, cells, own, kept = ctx.saved_tensors
        bs, cell_clip, proj_clip, reg = ctx.batch_sizes, ctx.cell_clip, ctx.proj_clip, ctx.reg
        # Without zoneout the step's own output is the output, and its cell the carried cell.
        own = out if own is None else own
        kept = cells if kept is None else kept
        D, T, B, H4 = gates.shape
        H, P = H4 // 4, out.shape[-1]
        dt = out.dtype
        dh = g_h.to(dt).clone() if g_h is not None else h0.new_zeros((D, B, P))
        dc = g_c.to(dt).clone() if g_c is not None else c0.new_zeros((D, B, H))
        g_out = g_out.to(dt) if g_out is not None else out.new_zeros(out.shape)
        d_gates = gates.new_empty((D, T, B, H4))
        # The gradient at each step's (pre-clip) projection, for W_p's gradient (if W_p trains).
        d_h_all = out.new_empty((D, T, B, P)) if w_p is not None else None
        _zero_finished_rows(bs, *(buf for buf in (d_gates, d_h_all) if buf is not None))
        # d_h W_p^T and d_gates W_h^T against transposed views (oneDNN takes them as they are,
        # in its (N, K) layout); a contiguous copy of W_h^T for MKL would cost more than it saves
        # over the ~20 steps of a window. Nothing here is packed for a fixed row count, so each
        # step multiplies only the n running rows.
        proj_t = None if w_p is None else Products(w_p.transpose(1, 2), B, ctx.gemm, pack=False)
        gates_t = Products(w_h.transpose(1, 2), B, ctx.gemm, pack=False)
        for t in reversed(range(T)):
            n = bs[t]
            if n == 0:
                continue
            d_out = g_out[:, t, :n] + dh[:, :n]  # at h_t, the state carried on
            if reg.zone is not None:
                z_h, z_c = _at(reg.zone[0], t, n), _at(reg.zone[1], t, n)
            d_hr = d_out if reg.zone is None else d_out * (1 - z_h)  # at the step's own h~_t
            if proj_clip is not None:
                d_hr = d_hr * (own[:, t, :n].abs() < proj_clip)
            if d_h_all is not None:
                d_h_all[:, t, :n] = d_hr
            dm = d_hr if proj_t is None else proj_t(d_hr)  # (D, n, H)
            act = gates[:, t, :n]
            i, f, o, g = act[..., :H], act[..., H : 2 * H], act[..., 2 * H : 3 * H], act[..., 3 * H :]
            c_t = cells[:, t, :n]
            tanh_c = torch.tanh(c_t)
            d_kept = dc[:, :n]  # at c_t, the cell carried on
            d_c = d_kept if reg.zone is None else d_kept * (1 - z_c)
            d_c = d_c + dm * o * (1 - tanh_c * tanh_c)  # at the step's own (clipped) c~_t
            if cell_clip is not None:
                d_c = d_c * (c_t.abs() < cell_clip)
            c_prev = kept[:, t - 1, :n] if t > 0 else c0[:, :n]
            u = None if reg.update is None else reg.update[:, t, :n]
            g_in = g if u is None else g * u  # the update that entered c_t
            dg = d_gates[:, t, :n]  # (D, n, 4H), written in place
            torch.mul(d_c * g_in, i * (1 - i), out=dg[..., :H])
            torch.mul(d_c * c_prev, f * (1 - f), out=dg[..., H : 2 * H])
            torch.mul(dm * tanh_c, o * (1 - o), out=dg[..., 2 * H : 3 * H])
            torch.mul(d_c * i if u is None else d_c * i * u, 1 - g * g, out=dg[..., 3 * H :])
            d_prev = gates_t(dg)  # (D, n, P): at the (masked) h_{t-1} that entered W_h
            if reg.state is not None:
                d_prev = d_prev * reg.state[:, :n]
            if reg.zone is None:
                dc[:, :n] = d_c * f
                dh[:, :n] = d_prev
            else:  # zoneout carried a share w of the previous state straight through
                dc[:, :n] = d_c * f + d_kept * z_c
                dh[:, :n] = d_prev + d_out * z_h
        # Weight gradients: one large matmul each, over all steps (inactive rows are zero).
        h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1)  # (D, T, B, P)
        if reg.state is not None:
            h_prev = h_prev * reg.state.unsqueeze(1)
        d_w_h = torch.bmm(h_prev.reshape(D, T * B, P).transpose(1, 2),
                          d_gates.reshape(D, T * B, H4))  # (D, P, 4H)
        d_w_p = None
        if w_p is not None:
            m_all = gates[..., 2 * H : 3 * H] * torch.tanh(cells)  # (D, T, B, H)
            d_w_p = torch.bmm(m_all.reshape(D, T * B, H).transpose(1, 2),
                              d_h_all.reshape(D, T * B, P))  # (D, H, P)
        return d_gates.to(ctx.x_dtype), dh, dc, d_w_h, d_w_p, None, None, None, None, None
