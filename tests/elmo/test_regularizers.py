"""Recurrent regularizers: mask shapes and time structure, evaluation without randomness, zoneout's
evaluation step as the expectation of the training step."""

from __future__ import annotations

import pytest
import torch

from elmo.cells import make_layer
from elmo.config import CELLS, BiLMConfig
from elmo.lstm import batch_sizes_from_lengths

IN, H, P = 8, 10, 8


def make(cell, kind, rate, clips=(None, None)):
    config = BiLMConfig(dim=H, projection_dim=P, n_layers=1, cell_clip=clips[0], proj_clip=clips[1],
                        cell=cell, recurrent_dropout_kind=kind, recurrent_dropout=rate,
                        transition_depth=2 if cell == "rhn" else 1)
    return make_layer(config, IN).double()


def kinds_for(cell):
    return [k for k in ("variational", "semeniuta", "zoneout")
            if not (k == "semeniuta" and cell in ("elman", "jordan"))]


def assert_fresh_per_step(mask, p):
    """Independent masks at consecutive steps agree on a unit with probability p^2 + (1-p)^2
    (0.62 for p = 0.25); a mask held constant across time would agree always."""
    agreement = (mask[1:] == mask[:-1]).double().mean().item()
    assert abs(agreement - (p * p + (1 - p) * (1 - p))) < 0.1, agreement


@pytest.mark.parametrize("cell", CELLS)
def test_variational_masks_are_constant_across_time(cell):
    """One mask per sequence: an output unit or an input unit of a row is dropped at every step
    or at none (seen in the outputs and in the input gradients of one forward call)."""
    T, B = 6, 4
    layer = make(cell, "variational", 0.5).train()
    masks = layer.sample_masks(T, B)
    assert masks.input.shape == (B, IN) and masks.output.shape == (B, P)
    assert masks.update is None and masks.zone is None
    if cell in ("sru", "qrnn"):
        assert masks.state is None  # no recurrent matmul to mask
    else:
        assert masks.state.shape == (B, layer.recurrent_dim)
    assert set(masks.input.unique().tolist()) == {0.0, 2.0}  # Bernoulli(0.5) / 0.5

    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x, [B] * T)  # masks drawn inside: training mode
    out.sum().backward()
    for values in (out.detach(), x.grad):
        zero = values == 0  # (T, B, D)
        all_steps, no_step = zero.all(0), ~zero.any(0)
        assert bool((all_steps | no_step).all()), "a unit is dropped at some steps only"
        assert bool(all_steps.any()) and bool(no_step.any())


@pytest.mark.parametrize("cell", [c for c in CELLS if c not in ("elman", "jordan")])
def test_semeniuta_masks_change_every_step(cell):
    T, B = 6, 4
    layer = make(cell, "semeniuta", 0.25).train()
    masks = layer.sample_masks(T, B)
    assert masks.input is masks.state is masks.output is masks.zone is None
    assert masks.update.shape == (T, B, layer.update_dim)
    assert set(masks.update.unique().tolist()) == {0.0, 1 / 0.75}
    assert_fresh_per_step(masks.update, 0.25)


@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_masks(cell):
    T, B = 50, 8
    layer = make(cell, "zoneout", 0.3).train()
    masks = layer.sample_masks(T, B)
    expected = layer.state_sizes[:1] if cell in ("qrnn",) else layer.state_sizes
    assert [tuple(m.shape) for m in masks.zone] == [(T, B, s) for s in expected]
    for m in masks.zone:
        assert set(m.unique().tolist()) == {0.0, 1.0}  # 1 = keep the previous value; not rescaled
        assert abs(m.mean().item() - 0.3) < 0.05
        assert_fresh_per_step(m, 0.3)


def test_semeniuta_refused_without_a_candidate():
    for cell in ("elman", "jordan"):
        with pytest.raises(ValueError, match="semeniuta.*variational or zoneout"):
            BiLMConfig(cell=cell, recurrent_dropout_kind="semeniuta", recurrent_dropout=0.1)


@pytest.mark.parametrize("cell", CELLS)
def test_evaluation_has_no_randomness(cell):
    """Evaluation draws no random numbers; variational and semeniuta then compute exactly the
    unregularized cell; training draws new masks at every call."""
    T, B = 5, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    bs = batch_sizes_from_lengths([5, 4, 2])
    for kind in kinds_for(cell):
        layer = make(cell, kind, 0.5).eval()
        rng = torch.get_rng_state()
        a, fa = layer(x, bs)
        b, fb = layer(x, bs)
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(fa, fb))
        if kind != "zoneout":
            plain = make(cell, None, 0.0).eval()
            plain.load_state_dict(layer.state_dict())
            c, fc = plain(x, bs)
            torch.testing.assert_close(a, c, rtol=0, atol=1e-13)
        layer.train()
        t1, t2 = layer(x, bs)[0], layer(x, bs)[0]
        assert not torch.equal(t1, t2)


@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_evaluation_is_the_expectation(cell):
    """For one step from a given state: eval state = p * (every unit kept) + (1 - p) * (every unit
    updated), exactly; and the mean of many random training steps approaches it."""
    p, B = 0.3, 4000
    layer = make(cell, "zoneout", p)
    x = torch.randn(1, 1, IN, dtype=torch.float64).expand(1, B, IN)
    state = tuple(torch.randn(1, s, dtype=torch.float64).expand(B, s) for s in layer.state_sizes)
    layer.train()
    base = layer.sample_masks(1, B)
    keep = base._replace(zone=tuple(torch.ones_like(m) for m in base.zone))
    update = base._replace(zone=tuple(torch.zeros_like(m) for m in base.zone))
    _, kept = layer(x, [B], state, masks=keep)
    _, updated = layer(x, [B], state, masks=update)
    _, sampled = layer(x, [B], state)
    layer.eval()
    _, expected = layer(x, [B], state)
    for k in range(layer.n_zoned):
        torch.testing.assert_close(kept[k], state[k], rtol=0, atol=0)
        torch.testing.assert_close(expected[k], p * kept[k] + (1 - p) * updated[k], rtol=0, atol=1e-13)
        torch.testing.assert_close(sampled[k].mean(0), expected[k][0], rtol=0, atol=0.05)
        assert not torch.allclose(updated[k], kept[k])  # the step does change the state
