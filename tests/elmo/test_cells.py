"""Every cell in elmo.cells against a plain reference written from its paper's equations.

The reference runs one row at a time, one step at a time, on 1-d vectors, with the blocks of each
weight matrix sliced out by hand; the cells run packed batches with one matmul over the whole
sequence. They must agree in float64 to 1e-10, in evaluation mode and in training mode with the
same dropout masks, for every regularizer. Then gradcheck on a tiny size.
"""

from __future__ import annotations

import pytest
import torch

from elmo.cells import make_layer
from elmo.cells.base import SteppedLayer
from elmo.cells.regularizers import DropoutMasks
from elmo.cells.scan import linear_scan
from elmo.config import CELLS, BiLMConfig
from elmo.lstm import FORGET_BIAS, LstmProjection, batch_sizes_from_lengths

LENGTHS = [5, 4, 4, 2, 0]  # sorted, with an empty row
IN, H, P = 5, 6, 4


def sig(z):
    return 1.0 / (1.0 + torch.exp(-z))


def clip(v, bound):
    return v if bound is None else v.clamp(-bound, bound)


def block(m, k, size, offset=0):
    """Columns [offset + k*size, offset + (k+1)*size) of a matrix (or entries of a vector)."""
    return m[..., offset + k * size : offset + (k + 1) * size]


def transition(L, r, mask):
    """Variational mask on the recurrent input, then the deep-transition tanh layers."""
    if mask is not None:
        r = r * mask
    for w, b in zip(getattr(L, "transition_weights", []), getattr(L, "transition_biases", [])):
        r = torch.tanh(r @ w + b)
    return r


# -- reference steps: (layer, x_t (in,), state tuple of 1-d, masks of this row/step, zone) ------
# ``zone(k, new, old)`` applies zoneout to state k; each returns (new state tuple, output y_t (P,)).
def ref_lstm_family(L, x, st, m, zone, variant):
    h, c = st
    Hd = L.hidden_dim
    r = transition(L, h, m["state"])
    W, U, b = L.input_weight, L.state_weight, L.input_bias

    def pre(k):
        return x @ block(W, k, Hd) + r @ block(U, k, Hd) + block(b, k, Hd)

    if variant == "cifg":  # blocks (f, o, g), i = 1 - f
        f = sig(pre(0) + FORGET_BIAS)
        i, o_pre, g = 1 - f, pre(1), torch.tanh(pre(2))
    else:  # blocks (i, f, o, g)
        i_pre, f_pre, o_pre, g = pre(0), pre(1), pre(2), torch.tanh(pre(3))
        if variant == "peephole":
            i_pre, f_pre = i_pre + L.peephole[0] * c, f_pre + L.peephole[1] * c
        i, f = sig(i_pre), sig(f_pre + FORGET_BIAS)
    if m["update"] is not None:
        g = g * m["update"]
    c_new = clip(f * c + i * g, L.cell_clip)
    o = sig(o_pre + L.peephole[2] * c_new) if variant == "peephole" else sig(o_pre)
    h_new = clip((o * torch.tanh(c_new)) @ L.projection_weight, L.proj_clip)
    h_new, c_new = zone(0, h_new, h), zone(1, c_new, c)
    return (h_new, c_new), h_new


def ref_residual_lstm(L, x, st, m, zone):
    h, c = st
    Hd = L.hidden_dim
    r = transition(L, h, m["state"])
    W, U, b = L.input_weight, L.state_weight, L.input_bias
    z = x @ W + r @ U + b
    i, f, g = sig(block(z, 0, Hd)), sig(block(z, 1, Hd) + FORGET_BIAS), torch.tanh(block(z, 2, Hd))
    o = sig(z[3 * Hd :])  # (P,)
    if m["update"] is not None:
        g = g * m["update"]
    c_new = clip(f * c + i * g, L.cell_clip)
    h_new = clip(o * (torch.tanh(c_new) @ L.projection_weight + x @ L.shortcut_weight), L.proj_clip)
    h_new, c_new = zone(0, h_new, h), zone(1, c_new, c)
    return (h_new, c_new), h_new


def ref_elman(L, x, st, m, zone):
    h = zone(0, torch.tanh(x @ L.input_weight + L.input_bias + transition(L, st[0], m["state"]) @ L.state_weight),
             st[0])
    return (h,), clip(h @ L.projection_weight, L.proj_clip)


def ref_jordan(L, x, st, m, zone):
    h = torch.tanh(x @ L.input_weight + L.input_bias + transition(L, st[0], m["state"]) @ L.state_weight)
    y = zone(0, clip(h @ L.projection_weight, L.proj_clip), st[0])
    return (y,), y


def ref_gru(L, x, st, m, zone):
    h = st[0]
    Hd = L.hidden_dim
    W, b = L.input_weight, L.input_bias
    hr = transition(L, h, m["state"])
    r = sig(x @ block(W, 0, Hd) + hr @ block(L.gate_weight, 0, Hd) + block(b, 0, Hd))
    z = sig(x @ block(W, 1, Hd) + hr @ block(L.gate_weight, 1, Hd) + block(b, 1, Hd))
    cand = torch.tanh(x @ block(W, 2, Hd) + (r * hr) @ L.candidate_weight + block(b, 2, Hd))
    if m["update"] is not None:
        cand = cand * m["update"]
    h_new = zone(0, z * h + (1 - z) * cand, h)
    return (h_new,), clip(h_new @ L.projection_weight, L.proj_clip)


def ref_rhn(L, x, st, m, zone):
    s = st[0]
    Hd = L.hidden_dim
    for l, (R, b) in enumerate(zip(L.micro_weights, L.micro_biases)):
        s_in = s if m["state"] is None else s * m["state"]
        parts = [s_in @ block(R, k, Hd) + block(b, k, Hd) for k in range(3)]
        if l == 0:
            parts = [p + x @ block(L.input_weight, k, Hd) for k, p in enumerate(parts)]
        h, t, c = torch.tanh(parts[0]), sig(parts[1]), sig(parts[2])
        if m["update"] is not None:
            h = h * block(m["update"], l, Hd)
        s = h * t + s * c
    s = zone(0, s, st[0])
    return (s,), clip(s @ L.projection_weight, L.proj_clip)


def ref_sru(L, x, st, m, zone):
    c = st[0]
    Hd = L.hidden_dim
    W = L.input_weight
    x_tilde = x @ block(W, 0, Hd)
    f = sig(x @ block(W, 1, Hd) + block(L.gate_bias, 0, Hd))
    r = sig(x @ block(W, 2, Hd) + block(L.gate_bias, 1, Hd))
    skip = x @ block(W, 3, Hd) if W.shape[1] == 4 * Hd else x
    if m["update"] is not None:
        x_tilde = x_tilde * m["update"]
    c_new = zone(0, f * c + (1 - f) * x_tilde, c)
    h = r * torch.tanh(c_new) + (1 - r) * skip
    return (c_new,), clip(h @ L.projection_weight, L.proj_clip)


def ref_qrnn(L, x, st, m, zone):
    c, x_prev = st
    Hd, n_in = L.hidden_dim, L.input_dim
    W1, W2 = L.input_weight[:n_in], L.input_weight[n_in:]  # taps x_{t-1}, x_t
    mask = 1.0 if m["input"] is None else m["input"]
    xp, xc = x_prev * mask, x * mask
    z = torch.tanh(xp @ block(W1, 0, Hd) + xc @ block(W2, 0, Hd) + block(L.input_bias, 0, Hd))
    f = sig(xp @ block(W1, 1, Hd) + xc @ block(W2, 1, Hd) + block(L.input_bias, 1, Hd))
    o = sig(xp @ block(W1, 2, Hd) + xc @ block(W2, 2, Hd) + block(L.input_bias, 2, Hd))
    if m["update"] is not None:
        z = z * m["update"]
    c_new = zone(0, f * c + (1 - f) * z, c)
    return (c_new, x), clip((o * c_new) @ L.projection_weight, L.proj_clip)


REFERENCE = {
    "lstm": lambda *a: ref_lstm_family(*a, "lstm"),
    "peephole": lambda *a: ref_lstm_family(*a, "peephole"),
    "cifg": lambda *a: ref_lstm_family(*a, "cifg"),
    "residual-lstm": ref_residual_lstm, "elman": ref_elman, "jordan": ref_jordan, "gru": ref_gru,
    "rhn": ref_rhn, "sru": ref_sru, "qrnn": ref_qrnn,
}


def reference(L, cell, x, lengths, state, masks):
    """Run ``REFERENCE[cell]`` row by row. x (T, B, in); returns outputs (T, B, P), final states."""
    T, B, _ = x.shape
    out = torch.zeros(T, B, L.projection_dim, dtype=x.dtype)
    finals = []
    for b in range(B):
        st = tuple(s[b] for s in state)
        for t in range(lengths[b]):
            def zone(k, new, old):
                if getattr(L, "recurrent_dropout_kind", None) != "zoneout" or k >= L.n_zoned:
                    return new
                w = masks.zone[k][t, b] if L.training else L.recurrent_dropout
                return w * old + (1 - w) * new

            row = {"input": None if masks.input is None else masks.input[b],
                   "state": None if masks.state is None else masks.state[b],
                   "update": None if masks.update is None else masks.update[t, b]}
            x_t = x[t, b]
            if masks.input is not None and cell != "qrnn":  # the QRNN masks both of its taps itself
                x_t = x_t * masks.input[b]
            st, y = REFERENCE[cell](L, x_t, st, row, zone)
            out[t, b] = y if masks.output is None else y * masks.output[b]
        finals.append(st)
    return out, tuple(torch.stack([f[k] for f in finals]) for k in range(len(state)))


def make(cell, kind=None, rate=0.0, depth=1, in_dim=IN, hidden=H, proj=P, clips=(0.9, 0.8)):
    config = BiLMConfig(dim=hidden, projection_dim=proj, n_layers=1, cell_clip=clips[0],
                        proj_clip=clips[1], cell=cell, recurrent_dropout_kind=kind,
                        recurrent_dropout=rate, transition_depth=depth)
    layer = make_layer(config, in_dim).double()
    with torch.no_grad():  # move every parameter away from its special initial value
        for p in layer.parameters():
            p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))
    return layer


def state_sizes(layer):
    return layer.state_sizes


def mask_kwargs(layer, masks):
    """Every cell, the original LSTM included, takes the masks of a training call."""
    return {"masks": masks}


def inputs_and_state(layer, lengths, scale=1.5):
    T, B = max(lengths), len(lengths)
    x = torch.randn(T, B, layer.input_dim, dtype=torch.float64) * scale
    state = tuple(torch.randn(B, s, dtype=torch.float64) * 0.5 for s in state_sizes(layer))
    return x, state


def check_against_reference(layer, cell, lengths=LENGTHS, masks=None):
    x, state = inputs_and_state(layer, lengths)
    bs = batch_sizes_from_lengths(lengths)
    if masks is None:
        from elmo.cells.regularizers import DropoutMasks
        masks = DropoutMasks()
    out, final = layer(x, bs, state, **mask_kwargs(layer, masks if layer.training else None))
    ref_out, ref_final = reference(layer, cell, x, lengths, state, masks)
    assert out.shape == (max(lengths), len(lengths), layer.projection_dim)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    assert len(final) == len(state)
    for f, r in zip(final, ref_final):
        torch.testing.assert_close(f, r, rtol=0, atol=1e-10)
    return out, final


CELL_CASES = [(cell, 1) for cell in CELLS] + [
    (cell, 3) for cell in ("lstm", "elman", "jordan", "gru", "peephole", "cifg", "residual-lstm", "rhn")]


@pytest.mark.parametrize("cell,depth", CELL_CASES)
def test_cell_equals_reference(cell, depth):
    layer = make(cell, depth=depth).eval()
    out, final = check_against_reference(layer, cell)
    assert out[:, -1].abs().max() == 0 and out[2:, 3].abs().max() == 0  # zero past each row's end
    assert out[:, 0].abs().min() > 0
    if cell == "lstm" and depth == 1:
        assert isinstance(layer, LstmProjection)  # the original cell, untouched


def kinds_for(cell):
    return [k for k in ("variational", "semeniuta", "zoneout")
            if not (k == "semeniuta" and cell in ("elman", "jordan"))]


@pytest.mark.parametrize("cell", CELLS)
def test_cell_with_regularizers_equals_reference(cell):
    """Training mode with the same masks as the reference, and evaluation mode, for each kind."""
    for kind in kinds_for(cell):
        layer = make(cell, kind=kind, rate=0.4, depth=2 if cell == "rhn" else 1)
        layer.train()
        masks = layer.sample_masks(max(LENGTHS), len(LENGTHS))
        check_against_reference(layer, cell, masks=masks)
        layer.eval()
        check_against_reference(layer, cell)


def test_regularized_lstm_equals_the_original_cell():
    """cell="lstm" with a regularizer is the same class (elmo.lstm.Lstm) with the same weights,
    and in evaluation mode it computes what the plain original cell computes."""
    plain = make("lstm")
    regular = make("lstm", kind="semeniuta", rate=0.3)
    assert type(regular).__name__ == "Lstm"
    assert set(regular.state_dict()) == set(plain.state_dict())
    regular.load_state_dict(plain.state_dict())
    x, state = inputs_and_state(plain, LENGTHS)
    bs = batch_sizes_from_lengths(LENGTHS)
    a, fa = plain(x, bs, state)
    b, fb = regular.eval()(x, bs, state)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


def test_sru_highway_without_projection_of_x():
    """in == H: the highway term uses x_t itself (no W_s block)."""
    layer = make("sru", in_dim=H).eval()
    assert layer.input_weight.shape == (H, 3 * H)
    check_against_reference(layer, "sru")


def test_linear_scan():
    T, B, D = 6, 3, 4
    f = torch.rand(T, B, D, dtype=torch.float64, requires_grad=True)
    u = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    c, expected = linear_scan(f, u, c0), []
    prev = c0
    for t in range(T):
        prev = f[t] * prev + u[t]
        expected.append(prev)
    torch.testing.assert_close(c, torch.stack(expected), rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(linear_scan, (f, u, c0))
    with pytest.raises(ValueError, match="at least one time step"):
        linear_scan(f[:0], u[:0], c0)


STEPPED = [cell for cell in CELLS if isinstance(make(cell), SteppedLayer)]


@pytest.mark.parametrize("cell,kind", [(cell, None) for cell in STEPPED] + [("lstm", "zoneout"), ("gru", "zoneout")])
def test_dense_loop_equals_the_reference_at_each_rows_steps(cell, kind):
    """forward_dense (every row for all T steps, rows in any order; the loop torch.export keeps)
    computes, at each row's own steps, what the reference computes for that row's length; the final
    state is the reference's for the rows of T steps."""
    layer = make(cell, kind=kind, rate=0.3 if kind else 0.0).eval()
    lengths = [2, 5, 0, 4, 5]  # unsorted, with an empty row
    x, state = inputs_and_state(layer, lengths)
    out, final = layer.forward_dense(x, state)
    ref_out, ref_final = reference(layer, cell, x, lengths, state, DropoutMasks())
    assert out.shape == (5, 5, layer.projection_dim) and out.dtype == torch.float64
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[:n, b], ref_out[:n, b], rtol=0, atol=1e-10)
    for f, r in zip(final, ref_final):
        torch.testing.assert_close(f[[1, 4]], r[[1, 4]], rtol=0, atol=1e-10)
    assert (out[2:, 0] != 0).any()  # past a row's end the loop ran on: the caller masks it


def test_dense_loop_equals_the_packed_loop_bit_for_bit_when_rows_are_as_long():
    """float32, every row of T steps: the dense loop and the packed loop are the same operations."""
    layer = make("lstm").float().eval()
    x = torch.randn(6, 3, IN)
    packed, (h, c) = SteppedLayer.forward(layer, x, [3] * 6)
    dense, (h2, c2) = layer.forward_dense(x)
    assert torch.equal(packed, dense) and torch.equal(h, h2) and torch.equal(c, c2)
    assert dense.abs().min() > 0


def test_dense_loop_refuses_training_with_a_recurrent_regularizer():
    layer = make("lstm", kind="variational", rate=0.3).train()
    with pytest.raises(ValueError, match="evaluation only.*call eval"):
        layer.forward_dense(torch.randn(3, 2, IN, dtype=torch.float64))


GRAD_CASES = [(cell, None) for cell in CELLS] + [
    ("lstm", "zoneout"), ("gru", "variational"), ("sru", "zoneout"), ("sru", "semeniuta"),
    ("qrnn", "variational"), ("qrnn", "zoneout"), ("rhn", "semeniuta"), ("residual-lstm", "variational")]


@pytest.mark.parametrize("cell,kind", GRAD_CASES)
def test_gradcheck(cell, kind):
    """Gradients w.r.t. inputs, initial state and every parameter (training masks held fixed)."""
    lengths = [3, 2]
    layer = make(cell, kind=kind, rate=0.3 if kind else 0.0, in_dim=3, hidden=3, proj=2,
                 depth=2 if cell in ("elman", "rhn") else 1, clips=(None, None))
    layer.train()
    masks = layer.sample_masks(3, 2)
    x, state = inputs_and_state(layer, lengths, scale=0.7)
    bs = batch_sizes_from_lengths(lengths)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

    def run(x, *rest):
        st, ps = rest[: len(state)], rest[len(state):]
        out, final = torch.func.functional_call(layer, dict(zip(names, ps)), (x, bs, st),
                                                mask_kwargs(layer, masks))
        return (out,) + tuple(final)

    args = (x.requires_grad_(),) + tuple(s.requires_grad_() for s in state) + tuple(params)
    assert torch.autograd.gradcheck(run, args)
