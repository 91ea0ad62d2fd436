"""The fused LSTM recurrence (elmo.kernels) with a recurrent regularizer computes the stepped
loop's function (elmo.cells.base.SteppedLayer.forward, the reference): the same outputs, final
states and gradients with the same masks, the same random numbers drawn in the same order, and
the biLM's loss and gradients unchanged by which loop runs."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_config
from elmo import ElmoBiLM, batch_to_ids
from elmo import kernels
from elmo.cells.base import SteppedLayer
from elmo.cells.regularizers import DropoutMasks
from elmo.kernels import LstmKernels
from elmo.lstm import Lstm, batch_sizes_from_lengths

KINDS = ("variational", "semeniuta", "zoneout")
LENGTHS = [6, 5, 5, 2, 0]  # rows end early; the last never runs
IN, H, P = 3, 5, 4
ACTIVE_CLIPS = (0.4, 0.15)  # small enough to clip in these cases (checked below)


def _layer(kind, clips=(None, None), rate=0.4, dtype=torch.float64, seed=3):
    torch.manual_seed(seed)
    layer = Lstm(IN, H, P, cell_clip=clips[0], proj_clip=clips[1], recurrent_dropout_kind=kind,
                 recurrent_dropout=rate).to(dtype)
    with torch.no_grad():  # a nonzero bias, so every parameter matters
        layer.input_bias.uniform_(-0.5, 0.5)
    return layer


def _inputs(dtype=torch.float64, seed=4):
    g = torch.Generator().manual_seed(seed)
    B = len(LENGTHS)
    x = torch.randn(max(LENGTHS), B, IN, generator=g, dtype=dtype).requires_grad_()
    h0 = torch.randn(B, P, generator=g, dtype=dtype).requires_grad_()  # a carried state
    c0 = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_()
    return x, h0, c0


def _flat(result):
    out, (h, c) = result
    return [out, h, c]


def _grads(results, inputs, seed=5):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.device, r.dtype) for r in results]
    return torch.autograd.grad(sum((r * w).sum() for r, w in zip(results, weights)), inputs)


def _max_diff(xs, ys):
    return max((a - b).abs().max().item() for a, b in zip(xs, ys))


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused loop's runs (to show the fused path is the one being compared)."""
    calls = []
    real = kernels._recurrence

    def spy(*args, **kwargs):
        calls.append(kwargs.get("save"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "_recurrence", spy)
    return calls


@pytest.mark.parametrize("clips", [(None, None), ACTIVE_CLIPS], ids=["no-clip", "clip"])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_equals_the_stepped_loop_with_the_same_masks(kind, clips, fused_calls):
    layer = _layer(kind, clips).train()
    assert layer.runs_fused
    x, h0, c0 = _inputs()
    bs = batch_sizes_from_lengths(LENGTHS)
    masks = layer.sample_masks(x.shape[0], x.shape[1])
    fused = _flat(layer(x, bs, (h0, c0), masks=masks))
    assert fused_calls == [True]
    stepped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0), masks=masks))
    assert _max_diff(fused, stepped) <= 1e-10
    inputs = (x, h0, c0, *layer.parameters())
    assert _max_diff(_grads(fused, inputs), _grads(stepped, inputs)) <= 1e-10
    # rows past their end are untouched: zero outputs, and the row that never ran keeps h0, c0
    for b, n in enumerate(LENGTHS):
        assert bool((fused[0][n:, b] == 0).all())
    assert torch.equal(fused[1][-1], h0[-1]) and torch.equal(fused[2][-1], c0[-1])
    # the comparison can fail: the masks and the clips change the function here
    unmasked = _flat(layer(x, bs, (h0, c0), masks=DropoutMasks()))
    assert _max_diff(fused, unmasked) > 1e-3
    if clips != (None, None):
        layer.cell_clip = layer.proj_clip = None
        unclipped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0), masks=masks))
        assert _max_diff(fused, unclipped) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_masks_are_drawn_as_the_stepped_loop_draws_them(kind):
    """Without given masks both paths draw the same random numbers in the same order (a resumed
    run consumes the generator as before): equal results and an equal generator state after."""
    layer = _layer(kind).train()
    x, h0, c0 = _inputs()
    bs = batch_sizes_from_lengths(LENGTHS)
    torch.manual_seed(11)
    fused = _flat(layer(x, bs, (h0, c0)))
    after_fused = torch.get_rng_state()
    torch.manual_seed(11)
    stepped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0)))
    assert torch.equal(after_fused, torch.get_rng_state())
    assert _max_diff(fused, stepped) <= 1e-10
    empty = torch.zeros(0, 5, IN, dtype=torch.float64)  # no step: the masks are drawn all the same
    torch.manual_seed(11)
    seeded = torch.get_rng_state()
    assert layer(empty, [], None)[0].shape == (0, 5, P)
    after_fused = torch.get_rng_state()
    torch.manual_seed(11)
    SteppedLayer.forward(layer, empty, [], None)
    assert torch.equal(after_fused, torch.get_rng_state())
    assert (kind == "variational") != torch.equal(after_fused, seeded)  # (T x B masks: none)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_equals_the_stepped_loop(kind, fused_calls):
    """In evaluation no mask is used; zoneout is the expectation lerp(s~, s_prev, p). With and
    without gradients (the inference branch)."""
    layer = _layer(kind, ACTIVE_CLIPS).eval()
    x, h0, c0 = _inputs()
    bs = batch_sizes_from_lengths(LENGTHS)
    fused = _flat(layer(x, bs, (h0, c0)))
    stepped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0)))
    assert _max_diff(fused, stepped) <= 1e-10
    inputs = (x, h0, c0, *layer.parameters())
    assert _max_diff(_grads(fused, inputs), _grads(stepped, inputs)) <= 1e-10
    with torch.no_grad():
        inference = _flat(layer(x, bs, (h0, c0)))
    assert fused_calls == [True, False]
    assert _max_diff(inference, stepped) <= 1e-10
    if kind == "zoneout":  # the expectation differs from the plain cell
        layer.recurrent_dropout_kind = None
        assert _max_diff(fused, _flat(SteppedLayer.forward(layer, x, bs, (h0, c0)))) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_inference_branch_in_training_mode_uses_the_masks(kind, fused_calls):
    """Training mode under no_grad (the loop without its backward) applies the same masks."""
    layer = _layer(kind, ACTIVE_CLIPS).train()
    x, h0, c0 = _inputs()
    bs = batch_sizes_from_lengths(LENGTHS)
    masks = layer.sample_masks(x.shape[0], x.shape[1])
    with torch.no_grad():
        fused = _flat(layer(x, bs, (h0, c0), masks=masks))
        stepped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0), masks=masks))
    assert fused_calls == [False]
    assert _max_diff(fused, stepped) <= 1e-10


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind, training):
    layer = _layer(kind, (0.6, 0.3), rate=0.3).train(training)
    lengths = [3, 2, 0]
    bs = batch_sizes_from_lengths(lengths)
    torch.manual_seed(8)
    x = torch.randn(3, 3, IN, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    masks = layer.sample_masks(3, 3)

    def f(x, h0, c0, *params):
        out, (h, c) = layer(x, bs, (h0, c0), masks=masks)
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *layer.parameters()))


@pytest.mark.parametrize("backend", ["onednn", "mkl", "plain"])
@pytest.mark.parametrize("kind", KINDS)
def test_float32_kernels_equal_the_stepped_loop(kind, backend):
    """Each GEMM library, in float32, against the stepped loop in float64 (same masks)."""
    layer = _layer(kind, ACTIVE_CLIPS, dtype=torch.float32).train()
    run = LstmKernels(backend)
    if run.gemm_for(layer.state_weight) != backend:
        pytest.skip(f"this torch build has no {backend} kernels")
    x, h0, c0 = _inputs(torch.float32)
    bs = batch_sizes_from_lengths(LENGTHS)
    masks = layer.sample_masks(x.shape[0], x.shape[1])
    fused = _flat(run.run([layer], [x], bs, [(h0, c0)], [masks])[0])
    # The inference branch: weights prepared for the row count (with MKL every step multiplies all
    # rows while most are running, so rows past their end are computed and must be dropped).
    with torch.no_grad():
        inference = _flat(run.run([layer], [x], bs, [(h0, c0)], [masks])[0])
    ref = _layer(kind, ACTIVE_CLIPS).train()
    ref.load_state_dict(layer.state_dict())
    x64, h64, c64 = (t.detach().double().requires_grad_() for t in (x, h0, c0))
    masks64 = DropoutMasks(*(m if m is None else tuple(z.double() for z in m) if isinstance(m, tuple)
                             else m.double() for m in masks))
    stepped = _flat(SteppedLayer.forward(ref, x64, bs, (h64, c64), masks=masks64))
    assert _max_diff([a.double() for a in fused], stepped) <= 1e-5
    assert _max_diff([a.double() for a in inference], stepped) <= 1e-5
    g32 = _grads(fused, (x, h0, c0, *layer.parameters()))
    g64 = _grads(stepped, (x64, h64, c64, *ref.parameters()))
    assert _max_diff([a.double() for a in g32], g64) <= 1e-4


def test_regularized_layers_fuse_only_with_equal_settings():
    run = LstmKernels()
    var = dict(recurrent_dropout_kind="variational", recurrent_dropout=0.25)
    a, b = Lstm(4, 6, 3, **var), Lstm(4, 6, 3, **var)
    assert a.runs_fused and run.fuses([a, b])
    assert not run.fuses([a, Lstm(4, 6, 3)])
    assert not run.fuses([a, Lstm(4, 6, 3, recurrent_dropout_kind="zoneout", recurrent_dropout=0.25)])
    assert not run.fuses([a, Lstm(4, 6, 3, recurrent_dropout_kind="variational", recurrent_dropout=0.1)])
    assert not run.fuses([a, Lstm(4, 6, 3, **var).eval()])
    assert not Lstm(4, 6, 3, transition_depth=2, **var).runs_fused


@pytest.mark.parametrize("kind", KINDS)
def test_bilm_loss_and_gradients_do_not_depend_on_the_loop(kind, monkeypatch):
    """A bidirectional biLM in training (both directions in one fused loop) against the stepped
    loop forced by ``runs_fused = False``: the same seed gives equal outputs, loss and gradients."""
    torch.manual_seed(0)
    config = make_tiny_config(recurrent_dropout_kind=kind, recurrent_dropout=0.3, cell_clip=0.5,
                              proj_clip=0.4)
    model = ElmoBiLM(config).double().train()
    ids = batch_to_ids([["The", "cat", "sat", "."], ["Hello", "there"], ["Yes"]])
    weights = None

    def loss_and_grads():
        nonlocal weights
        torch.manual_seed(21)
        layers = model(ids).layers
        if weights is None:
            g = torch.Generator().manual_seed(22)
            weights = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in layers]
        loss = sum((x * w).sum() for x, w in zip(layers, weights))
        params = [p for p in model.parameters() if p.requires_grad]
        return loss, layers, torch.autograd.grad(loss, params, allow_unused=True)

    fuses = []
    real_fuses = LstmKernels.fuses
    monkeypatch.setattr(LstmKernels, "fuses", lambda self, group: fuses.append(real_fuses(self, group))
                        or fuses[-1])
    loss_f, layers_f, grads_f = loss_and_grads()
    assert fuses and all(fuses)
    monkeypatch.setattr(Lstm, "runs_fused", False)
    fuses.clear()
    loss_s, layers_s, grads_s = loss_and_grads()
    assert fuses and not any(fuses)
    assert abs(loss_f.item() - loss_s.item()) <= 1e-10
    assert _max_diff(layers_f, layers_s) <= 1e-10
    pairs = [(a, b) for a, b in zip(grads_f, grads_s) if a is not None or b is not None]
    assert all(a is not None and b is not None for a, b in pairs)
    assert _max_diff(*zip(*pairs)) <= 1e-10
    torch.manual_seed(99)  # another seed, other masks: the loss changes (the masks are used)
    assert abs(sum((x * w).sum() for x, w in zip(model(ids).layers, weights)).item()
               - loss_s.item()) > 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_fused_loop_equals_the_cpu_one(kind):
    """On CUDA the fused loop (plain products) applies the same masks: equal outputs, states and
    gradients to the CPU's in float64."""
    layer = _layer(kind, ACTIVE_CLIPS).train()
    x, h0, c0 = _inputs()
    bs = batch_sizes_from_lengths(LENGTHS)
    masks = layer.sample_masks(x.shape[0], x.shape[1])
    cpu = _flat(layer(x, bs, (h0, c0), masks=masks))
    cpu_grads = _grads(cpu, (x, h0, c0, *layer.parameters()))
    gpu_layer = _layer(kind, ACTIVE_CLIPS).cuda().train()
    gpu_layer.load_state_dict(layer.state_dict())
    xg, hg, cg = (t.detach().cuda().requires_grad_() for t in (x, h0, c0))
    gpu_masks = DropoutMasks(*(m if m is None else tuple(z.cuda() for z in m) if isinstance(m, tuple)
                               else m.cuda() for m in masks))
    gpu = _flat(gpu_layer(xg, bs, (hg, cg), masks=gpu_masks))
    assert all(t.is_cuda for t in gpu)
    assert _max_diff([t.cpu() for t in gpu], cpu) <= 1e-10
    gpu_grads = _grads(gpu, (xg, hg, cg, *gpu_layer.parameters()))
    assert _max_diff([g.cpu() for g in gpu_grads], cpu_grads) <= 1e-10


@pytest.mark.parametrize("kind", (None,) + KINDS)
def test_a_frozen_identity_projection_is_skipped_with_the_same_function(kind, fused_calls, monkeypatch):
    """W_p fixed at the identity and frozen (Kim et al.'s plain LSTM): the fused loop, its
    backward and the stepped loop skip the product and compute what multiplying by it computes."""
    torch.manual_seed(3)
    layer = Lstm(IN, H, H, cell_clip=ACTIVE_CLIPS[0], recurrent_dropout_kind=kind,
                 recurrent_dropout=0.4).double().train()
    with torch.no_grad():
        layer.input_bias.uniform_(-0.5, 0.5)
        layer.projection_weight.copy_(torch.eye(H, dtype=torch.float64))
    layer.projection_weight.requires_grad_(False)
    built = []
    real = kernels.Products

    def counting(weights, *args, **kwargs):
        built.append(tuple(weights.shape) if isinstance(weights, torch.Tensor) else len(weights))
        return real(weights, *args, **kwargs)

    monkeypatch.setattr(kernels, "Products", counting)
    g = torch.Generator().manual_seed(4)
    B = len(LENGTHS)
    x = torch.randn(max(LENGTHS), B, IN, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64).requires_grad_()
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64).requires_grad_()
    bs = batch_sizes_from_lengths(LENGTHS)
    masks = layer.sample_masks(x.shape[0], x.shape[1])
    inputs = (x, h0, c0, layer.input_weight, layer.state_weight, layer.input_bias)
    results = {}
    for skip in (False, True):
        layer.projection_is_identity = skip
        assert layer.skips_projection == skip
        built.clear()
        fused = _flat(layer(x, bs, (h0, c0), masks=masks))
        grads = _grads(fused, inputs)
        # forward and backward: W_h and W_p products (2 + 2), or W_h's alone (1 + 1)
        assert len(built) == (2 if skip else 4), built
        stepped = _flat(SteppedLayer.forward(layer, x, bs, (h0, c0), masks))
        with torch.no_grad():
            layer.eval()
            inference = _flat(layer(x, bs, (h0, c0)))
            layer.train()
        results[skip] = (fused, grads, stepped, inference)
    assert len(fused_calls) == 4  # the fused loop ran, with and without the skip
    for multiplied, skipped in zip(results[False], results[True]):
        assert _max_diff(multiplied, skipped) < 1e-12
    assert _max_diff(results[True][0], results[True][2]) < 1e-12  # fused = stepped
    assert (results[True][0][0].abs() > 0).any() and (results[True][1][0].abs() > 0).any()
    # A trainable W_p is multiplied (and learns) even with the flag set.
    layer.projection_is_identity = True
    layer.projection_weight.requires_grad_(True)
    assert not layer.skips_projection
