"""The projected LSTM: hand-written backward vs. gradcheck and a step-by-step reference."""

import torch

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
    from elmo.lstm import bidirectional_lstm

    torch.manual_seed(5)
    fwd = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    bwd = LstmProjection(3, 5, 4, cell_clip=0.5, proj_clip=0.3).double()
    bs = batch_sizes_from_lengths(LENGTHS)
    xs = [torch.randn(6, len(LENGTHS), 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    states = [(torch.randn(len(LENGTHS), 4, dtype=torch.float64),
               torch.randn(len(LENGTHS), 5, dtype=torch.float64)) for _ in range(2)]
    fused = bidirectional_lstm(fwd, bwd, *xs, bs, *states)
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
