"""tasks.encoder.Dropout: nn.Dropout's distribution from a float-uniform mask.

(The tests of the former 14-bit-integer mask are replaced by these: that mechanism is gone, and
the rate applied is now exactly p, no longer p rounded to a multiple of 1/16384.)
"""

import pytest
import torch
from torch import nn

from tasks import ner
from tasks.config import resolve_config
from tasks.data import Symbols
from tasks.encoder import Dropout, SequenceEncoder


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


def test_rate_is_p_itself_at_any_p_like_nn_dropout():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    for p in (0.1, 0.5, 0.9, 1 / 3, 1e-3):
        kept = (Dropout(p).train()(x) != 0).float().mean().item()
        reference = (nn.Dropout(p).train()(x) != 0).float().mean().item()
        sd = (p * (1 - p) / x.numel()) ** 0.5
        assert abs(kept - (1 - p)) < 5 * sd and abs(reference - (1 - p)) < 5 * sd, p
    # the mean is kept: E[y] = x
    y = Dropout(0.5).train()(torch.full((1000, 1000), 3.0))
    assert abs(y.mean().item() - 3.0) < 0.01


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
    assert Dropout(0.5)(torch.zeros(0, 7)).shape == (0, 7)


def test_heads_use_the_configured_rates():
    cfg = resolve_config("ner", {"use_elmo": False, "word_dim": 4, "char_dim": 0, "hidden_dim": 3,
                                 "num_lstm_layers": 2, "dropout": 0.25})
    model = ner.build(cfg, 10, Symbols(["O", "U-PER"], specials=False), None)
    rates = sorted(m.p for m in model.modules() if isinstance(m, Dropout))
    assert rates == [0.0, 0.25, 0.25]  # ELMo's (off for NER), the head's, between the BiLSTM layers
    lstm = SequenceEncoder(4, 3, 2, 0.5).train()
    x, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    torch.manual_seed(0)
    a = lstm(x, mask)
    torch.manual_seed(1)
    assert not torch.equal(a, lstm(x, mask))  # the dropout between the layers is on in training
    lstm.eval()
    assert torch.equal(lstm(x, mask), lstm(x, mask))


def test_bad_probability():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
