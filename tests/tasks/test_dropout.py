"""tasks.encoder.Dropout: nn.Dropout's distribution with a cheaper mask."""

import pytest
import torch

from tasks.encoder import Dropout


def test_training_mask_rate_scale_and_gradient():
    torch.manual_seed(0)
    layer = Dropout(0.3).train()
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200k draws: sd of the rate ~0.001
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / 0.7))
    y.sum().backward()  # d y / d x = mask / (1 - p)
    torch.testing.assert_close(x.grad, kept.float() / 0.7)


def test_evaluation_zero_and_one_and_determinism():
    x = torch.randn(3, 4, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(1)
    a = Dropout(0.5)(x)
    torch.manual_seed(1)
    b = Dropout(0.5)(x)
    assert torch.equal(a, b)
    assert Dropout(0.5)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_bad_probability():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
