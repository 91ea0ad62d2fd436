"""Highway, ScalarMix and the character CNN against hand-computed values and gradient checks."""

import numpy as np
import pytest
import torch

from elmo.char_cnn import CharCNN, Highway
from elmo.chars import batch_to_ids
from elmo.config import CharCNNConfig
from elmo.scalar_mix import ScalarMix


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_highway_matches_the_tf_formula():
    torch.manual_seed(1)
    hw = Highway(5, 2).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = x.numpy()
    for layer in hw.layers:
        w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        transform = expected @ w[:5].T + b[:5]
        carry = _sigmoid(expected @ w[5:].T + b[5:])
        expected = carry * np.maximum(transform, 0) + (1 - carry) * expected
    np.testing.assert_allclose(hw(x).detach().numpy(), expected, rtol=0, atol=1e-12)


def test_highway_gradcheck():
    hw = Highway(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hw, (x,))


def test_scalar_mix_matches_numpy_formula():
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([0.1, -0.5, 2.0]))
        mix.gamma.fill_(1.7)
    layers = [torch.randn(2, 4, 6) for _ in range(3)]
    w = np.exp([0.1, -0.5, 2.0]) / np.exp([0.1, -0.5, 2.0]).sum()
    expected = 1.7 * sum(wk * layer.numpy() for wk, layer in zip(w, layers))
    np.testing.assert_allclose(mix(layers).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    # a stacked (L, B, T, D) tensor works too
    np.testing.assert_allclose(mix(torch.stack(layers)).detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_scalar_mix_layer_norm_uses_each_sentences_real_positions():
    mix = ScalarMix(2, do_layer_norm=True)
    layers = [torch.randn(2, 5, 3) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = mix(layers, mask)
    expected = 0
    for layer in layers:
        x = layer[0, :3].numpy()  # sentence 0, real positions only
        expected = expected + 0.5 * (x - x.mean()) / np.sqrt(x.var() + 1e-12)
    np.testing.assert_allclose(out[0, :3].detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    # padding values do not leak into a sentence's normalisation
    layers2 = [layer.clone() for layer in layers]
    layers2[0][0, 3:] = 100.0
    torch.testing.assert_close(mix(layers2, mask)[0, :3], out[0, :3])
    with pytest.raises(ValueError, match="needs the mask"):
        mix(layers)


def test_scalar_mix_gradcheck():
    mix = ScalarMix(3, do_layer_norm=True).double()
    layers = [torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)

    def f(a, b, c, s, g):
        return mix([a, b, c], mask)

    assert torch.autograd.gradcheck(f, (*layers, mix.scalar_parameters, mix.gamma))


def test_scalar_mix_gradcheck_stacked_layers():
    mix = ScalarMix(3).double()
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([0.3, -1.0, 0.5]))
        mix.gamma.fill_(0.8)
    layers = torch.randn(3, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s, g: mix(x), (layers, mix.scalar_parameters, mix.gamma))
    torch.testing.assert_close(mix(layers), mix(list(layers)), rtol=0, atol=1e-12)


def test_scalar_mix_stacked_half_precision_and_empty_layers():
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([1.0, 0.0, -1.0]))
        mix.gamma.fill_(2.0)
    layers = torch.randn(3, 2, 5, 4).half()  # e.g. a float16 layer cache
    out = mix(layers)
    assert out.dtype == torch.float32 and out.shape == (2, 5, 4)
    w = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    expected = 2.0 * sum(w[k] * layers[k].float() for k in range(3))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, mix(list(layers)), rtol=1e-6, atol=1e-6)
    assert mix(torch.zeros(3, 0, 7, 4)).shape == (0, 7, 4)


def test_scalar_mix_rejects_wrong_layer_count():
    with pytest.raises(ValueError, match="built for 3 layers, got 2"):
        ScalarMix(3)([torch.zeros(1, 1, 1)] * 2)


def test_char_cnn_dedup_and_trim_equal_the_full_computation():
    torch.manual_seed(0)
    cnn = CharCNN(CharCNNConfig(embedding_dim=4, filters=[[1, 3], [3, 5], [7, 4]], n_highway=1), 6)
    sentences = [["the", "cat", "the", "x" * 60], ["é", "the"], []]
    ids = batch_to_ids(sentences)
    out = cnn(ids)
    assert out.shape == (3, 4, 6)
    assert out[2].abs().sum() == 0 and out[1, 2:].abs().sum() == 0
    with torch.no_grad():
        full = cnn.encode_characters(ids.reshape(-1, 50)).reshape(3, 4, 6)  # all 50 characters, no dedup
    mask = (ids > 0).any(-1)
    torch.testing.assert_close(out[mask], full[mask], rtol=0, atol=1e-6)
    # trimming keeps exactly the positions a short word needs: 3 + 2 + max width 7
    assert cnn.trim_characters(batch_to_ids([["the"]])[0]).shape == (1, 12)
    # many tokens of mixed lengths: encoded in two length groups, still equal to the full width
    words = [["w" * (1 + i % 40) + str(i) for i in range(150)]]
    many = batch_to_ids(words)[0]
    with torch.no_grad():
        torch.testing.assert_close(cnn.encode_tokens(many), cnn.encode_characters(many), rtol=0, atol=1e-6)


def test_char_cnn_rejects_wrong_shape():
    cnn = CharCNN(CharCNNConfig(embedding_dim=2, filters=[[1, 2]], n_highway=0), 3)
    with pytest.raises(ValueError, match=r"char_ids must be \(batch, tokens, 50\), got \(2, 7\)"):
        cnn(torch.zeros(2, 7, dtype=torch.long))


def test_reverse_padded_both_layouts_and_gradient():
    from elmo.bilm import reverse_padded

    torch.manual_seed(0)
    lengths = torch.tensor([4, 2, 0, 3])
    x = torch.randn(4, 5, 3)  # (B, T, D)
    expected = x.clone()
    for b, n in enumerate(lengths.tolist()):
        expected[b, :n] = x[b, :n].flip(0)
    torch.testing.assert_close(reverse_padded(x, lengths, time_dim=1), expected, rtol=0, atol=0)
    time_major = x.transpose(0, 1)  # a non-contiguous (T, B, D) view: the gather path
    torch.testing.assert_close(reverse_padded(time_major, lengths), expected.transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(reverse_padded(time_major.contiguous(), lengths), expected.transpose(0, 1),
                               rtol=0, atol=0)
    torch.testing.assert_close(reverse_padded(reverse_padded(x, lengths, 1), lengths, 1), x, rtol=0, atol=0)
    x.requires_grad_()
    w = torch.randn(4, 5, 3)
    (reverse_padded(x, lengths, time_dim=1) * w).sum().backward()
    w_back = w.clone()
    for b, n in enumerate(lengths.tolist()):
        w_back[b, :n] = w[b, :n].flip(0)
    torch.testing.assert_close(x.grad, w_back, rtol=0, atol=0)
    with pytest.raises(ValueError, match="time_dim must be 0 or 1, got 2"):
        reverse_padded(x, lengths, time_dim=2)


def test_tanh_char_cnn_applies_tanh_to_the_convolutions_and_relu_in_the_highway():
    """The options' activation is the convolutions' alone (the original and Kim et al. 2016:
    tanh convolutions, relu highway transform): checked against numpy."""
    torch.manual_seed(3)
    config = CharCNNConfig(embedding_dim=3, filters=[[1, 2], [2, 3]], n_highway=1, activation="tanh",
                           max_characters_per_token=8)
    cnn = CharCNN(config, output_dim=4).double()
    with torch.no_grad():
        for p in cnn.parameters():
            p.normal_(0, 1.5)  # large enough that tanh and relu differ on most entries
        cnn.char_embedding.weight[0].zero_()
    ids = torch.tensor([[5, 7, 9, 3, 261, 261, 261, 261], [2, 6, 261, 261, 261, 261, 261, 261]])
    emb = cnn.char_embedding.weight.detach().numpy()[ids.numpy()]  # (N, C, e)
    feats = []
    for conv in cnn.convolutions:
        w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()  # (k, e, width), (k,)
        width = w.shape[-1]
        L = emb.shape[1] - width + 1
        y = np.stack([np.einsum("nce,kec->nk", emb[:, j : j + width], w) for j in range(L)], 1) + b
        feats.append(np.tanh(y).max(1))
    x = np.concatenate(feats, -1)
    hw = cnn.highway.layers[0]
    w, b = hw.weight.detach().numpy(), hw.bias.detach().numpy()
    d = x.shape[1]
    gate = _sigmoid(x @ w[d:].T + b[d:])
    x = gate * np.maximum(x @ w[:d].T + b[:d], 0) + (1 - gate) * x
    expected = x @ cnn.projection.weight.detach().numpy().T + cnn.projection.bias.detach().numpy()
    np.testing.assert_allclose(cnn.encode_characters(ids).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cnn.encode_tokens(ids).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
