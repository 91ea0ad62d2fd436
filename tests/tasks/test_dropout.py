"""tasks.encoder.Dropout: nn.Dropout's distribution with a cheaper mask."""

import pytest
import torch

from tasks.encoder import MASK_LEVELS, Dropout, uniform_levels


def test_training_mask_rate_scale_and_gradient():
    torch.manual_seed(0)
    layer = Dropout(0.3).train()
    assert layer.rate == 4915 / 16384  # 0.3 to the nearest 1/16384
    scale = 16384 / (16384 - 4915)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200k draws: sd of the rate ~0.001
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 * scale))
    assert abs(scale - 1 / 0.7) < 3e-5
    y.sum().backward()  # d y / d x = mask / (1 - rate)
    torch.testing.assert_close(x.grad, kept.float() * scale)


def test_uniform_levels_are_uniform_in_every_quarter_of_a_draw():
    torch.manual_seed(0)
    n = 4 * 100_000
    v = uniform_levels((n,), torch.device("cpu"))
    assert v.dtype == torch.int16 and v.shape == (n,)
    assert int(v.min()) >= 0 and int(v.max()) < MASK_LEVELS
    assert int(v.max()) > MASK_LEVELS - 50 and int(v.min()) < 50  # the whole range is used
    # the four int16 quarters of each 64-bit draw: each has mean (L - 1) / 2 and its top bit set
    # half of the time (a quarter missing random bits would fail one of these)
    quarters = v.view(-1, 4).float()
    mean, sd_of_mean = (MASK_LEVELS - 1) / 2, MASK_LEVELS / 12 ** 0.5 / (n / 4) ** 0.5
    assert (quarters.mean(0) - mean).abs().max() < 5 * sd_of_mean
    top = (v.view(-1, 4) >= MASK_LEVELS // 2).float().mean(0)
    assert (top - 0.5).abs().max() < 0.01
    counts = torch.bincount(v.long() // (MASK_LEVELS // 16), minlength=16).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.03  # 25,000 per bin: sd 0.6%
    # odd sizes and shapes, and nothing at all
    assert uniform_levels((3, 5, 7), torch.device("cpu")).shape == (3, 5, 7)
    assert uniform_levels((0, 4), torch.device("cpu")).shape == (0, 4)


def test_evaluation_zero_and_one_and_determinism():
    x = torch.randn(3, 4, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert Dropout(1e-6).train()(x) is x  # rounds to a rate of 0
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(1)
    a = Dropout(0.5)(x)
    torch.manual_seed(1)
    b = Dropout(0.5)(x)
    assert torch.equal(a, b)
    assert Dropout(0.5)(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert Dropout(0.5)(torch.zeros(0, 7)).shape == (0, 7)


def test_bad_probability():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
