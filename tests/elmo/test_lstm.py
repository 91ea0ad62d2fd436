"""The projected LSTM: hand-written backward vs. gradcheck and a step-by-step reference."""

import pytest
import torch

from elmo import kernels
from elmo.kernels import LstmKernels
from elmo.lstm import LstmProjection, batch_sizes_from_lengths

LENGTHS = [6, 5, 5, 2, 0]


def _reference(layer, x, lengths, h0, c0):
    """Row by row, step by step, straight from the equations (autograd does the gradients)."""
    H = layer.hidden_dim
    outs, hs, cs = [], [], []
    for b, n in enumerate(lengths):
        h, c, rows = h0[b], c0[b], []
        for t in range(n):
            z = x[t, b] @ layer.input_weight + layer.input_bias + h @ layer.state_weight
            z = z + torch.cat([torch.zeros(H), torch.ones(H), torch.zeros(2 * H)]).double()  # forget +1
            i, f, o = torch.sigmoid(z[: 3 * H]).split(H)
            c = (f * c + i * torch.tanh(z[3 * H :])).clamp(-layer.cell_clip, layer.cell_clip)
            h = ((o * torch.tanh(c)) @ layer.projection_weight).clamp(-layer.proj_clip, layer.proj_clip)
            rows.append(h)
        rows += [torch.zeros_like(h0[b])] * (x.shape[0] - n)
        outs.append(torch.stack(rows))
        hs.append(h)
        cs.append(c)
    return torch.stack(outs, 1), torch.stack(hs), torch.stack(cs)


def _setup():
    torch.manual_seed(3)
    layer = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    x = torch.randn(6, len(LENGTHS), 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(len(LENGTHS), 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(len(LENGTHS), 5, dtype=torch.float64, requires_grad=True)
    return layer, x, h0, c0


def test_batch_sizes():
    assert batch_sizes_from_lengths([6, 5, 5, 2, 0]) == [4, 4, 3, 3, 3, 1]
    assert batch_sizes_from_lengths([]) == []


def test_forward_and_gradients_equal_the_reference():
    layer, x, h0, c0 = _setup()
    bs = batch_sizes_from_lengths(LENGTHS)
    out, (h, c) = layer(x, bs, (h0, c0))
    ref = _reference(layer, x, LENGTHS, h0, c0)
    for a, b in zip((out, h, c), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the clips are active in this case (so their gradients are tested too)
    assert (out.abs() == 0.3).any()
    weights = [torch.randn_like(a) for a in ref]
    inputs = (x, h0, c0, *layer.parameters())
    g1 = torch.autograd.grad(sum((a * w).sum() for a, w in zip((out, h, c), weights)), inputs)
    g2 = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ref, weights)), inputs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck():
    layer, x, h0, c0 = _setup()
    bs = batch_sizes_from_lengths(LENGTHS)

    def f(x, h0, c0, *params):
        out, (h, c) = layer(x, bs, (h0, c0))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *layer.parameters()))


def test_inference_path_equals_training_path():
    layer, x, h0, c0 = _setup()
    bs = batch_sizes_from_lengths(LENGTHS)
    out, (h, c) = layer(x, bs, (h0, c0))
    with torch.no_grad():
        out2, (h2, c2) = layer(x, bs, (h0, c0))
    torch.testing.assert_close(out, out2, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c2, rtol=0, atol=1e-12)


def test_zero_length_sequence():
    layer = LstmProjection(3, 5, 4)
    out, (h, c) = layer(torch.zeros(0, 2, 3), [], None)
    assert out.shape == (0, 2, 4) and h.shape == (2, 4) and c.shape == (2, 5)


def test_bidirectional_loop_equals_two_separate_layers():
    torch.manual_seed(5)
    fwd = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    bwd = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    bs = batch_sizes_from_lengths(LENGTHS)
    xs = [torch.randn(6, len(LENGTHS), 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    states = [(torch.randn(len(LENGTHS), 4, dtype=torch.float64),
               torch.randn(len(LENGTHS), 5, dtype=torch.float64)) for _ in range(2)]
    fused = LstmKernels().run([fwd, bwd], xs, bs, states)
    separate = [fwd(xs[0], bs, states[0]), bwd(xs[1], bs, states[1])]
    flat = lambda r: [r[0][0], *r[0][1], r[1][0], *r[1][1]]  # noqa: E731
    for a, b in zip(flat(fused), flat(separate)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    params = (*xs, *fwd.parameters(), *bwd.parameters())
    weights = [torch.randn_like(a) for a in flat(fused)]
    g1 = torch.autograd.grad(sum((a * w).sum() for a, w in zip(flat(fused), weights)), params)
    g2 = torch.autograd.grad(sum((a * w).sum() for a, w in zip(flat(separate), weights)), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["onednn", "mkl", "plain"])
def test_float32_kernels_equal_the_reference(backend):
    """Each library that can run the per-step products (LstmKernels(gemm), ELMO_GEMM) gives the
    float64 reference's outputs and gradients in float32, in training and in inference (packed
    weights)."""
    torch.manual_seed(7)
    layer = LstmProjection(8, 16, 6, cell_clip=0.5, proj_clip=0.3)
    run = LstmKernels(backend)
    if run.gemm_for(layer.state_weight) != backend:
        pytest.skip(f"this torch build has no {backend} kernels")
    lengths = [7, 5, 5, 2, 0]
    bs = batch_sizes_from_lengths(lengths)
    x = torch.randn(7, len(lengths), 8, requires_grad=True)
    h0, c0 = torch.randn(len(lengths), 6), torch.randn(len(lengths), 16)
    out, (h, c) = run.run([layer], [x], bs, [(h0, c0)])[0]
    with torch.no_grad():
        out_inf, (h_inf, c_inf) = run.run([layer], [x], bs, [(h0, c0)])[0]
    ref_layer = LstmProjection(8, 16, 6, cell_clip=0.5, proj_clip=0.3).double()
    ref_layer.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_()
    ref = _reference(ref_layer, x64, lengths, h0.double(), c0.double())
    for a, b, a_inf in zip((out, h, c), ref, (out_inf, h_inf, c_inf)):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a_inf.double(), b, rtol=0, atol=1e-5)
    weights = [torch.randn_like(b) for b in ref]
    g1 = torch.autograd.grad(sum((a.double() * w).sum() for a, w in zip((out, h, c), weights)),
                             (x, *layer.parameters()))
    g2 = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ref, weights)),
                             (x64, *ref_layer.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-4)


def test_unknown_gemm_choice_is_an_error():
    with pytest.raises(ValueError, match="ELMO_GEMM='cublas': expected auto, onednn, mkl or plain"):
        kernels.gemm_from_environment({"ELMO_GEMM": "cublas"})
    with pytest.raises(ValueError, match="gemm='cublas': expected auto, onednn, mkl or plain"):
        LstmKernels("cublas")
    assert kernels.gemm_from_environment({}) == "auto"
    assert kernels.gemm_from_environment({"ELMO_GEMM": "MKL"}) == "mkl"


def test_without_working_onednn_kernels_another_backend_runs(monkeypatch):
    """A build whose oneDNN ops fail the start-up check falls back to MKL or plain products."""
    monkeypatch.setattr(kernels, "onednn_works", lambda dtype: False)
    torch.manual_seed(2)
    layer = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3)
    run = LstmKernels("auto")
    assert run.gemm_for(layer.state_weight) in ("mkl", "plain")
    x = torch.randn(6, len(LENGTHS), 3)
    bs = batch_sizes_from_lengths(LENGTHS)
    with torch.no_grad():
        out, _ = run.run([layer], [x], bs, [layer.initial_state(len(LENGTHS))])[0]
    ref_layer = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    ref_layer.load_state_dict(layer.state_dict())
    zeros = (torch.zeros(len(LENGTHS), 4, dtype=torch.float64), torch.zeros(len(LENGTHS), 5, dtype=torch.float64))
    ref = _reference(ref_layer, x.double(), LENGTHS, *zeros)[0]
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
