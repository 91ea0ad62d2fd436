"""The Embedder: output views, laziness, ordering, batching, the vocabulary cache."""

import itertools

import numpy as np
import pytest
import torch

from elmo import ElmoBiLM, Embedder, ScalarMix

SENTENCES = [["a", "bb", "ccc"], [], ["x"] * 9, ["Hello", "world", "!"], ["q"], ["a", "q", "zz"]]


@pytest.fixture
def embedder(tiny_config):
    return Embedder(ElmoBiLM(tiny_config), device="cpu", batch_size=2)


def test_output_views(embedder):
    D = embedder.output_dim
    layers = embedder.embed_sentence(SENTENCES[0])
    assert layers.shape == (3, 3, D) and layers.dtype == np.float32
    np.testing.assert_array_equal(embedder.embed_sentence(SENTENCES[0], "top"), layers[2])
    np.testing.assert_allclose(embedder.embed_sentence(SENTENCES[0], "average"), layers.mean(0), atol=1e-7)
    mixed = embedder.embed_sentence(SENTENCES[0], [0.5, 0.0, 1.5])
    np.testing.assert_allclose(mixed, 0.5 * layers[0] + 1.5 * layers[2], atol=1e-6)
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([0.0, np.log(2.0), np.log(3.0)]))
        mix.gamma.fill_(2.0)
    expected = 2.0 * (layers[0] + 2 * layers[1] + 3 * layers[2]) / 6
    np.testing.assert_allclose(embedder.embed_sentence(SENTENCES[0], mix), expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs 3 layer weights"):
        embedder.embed_sentence(SENTENCES[0], [1.0, 2.0])
    with pytest.raises(ValueError, match="output must be one of"):
        embedder.embed_sentence(SENTENCES[0], "max")


def test_embed_sentences_keeps_input_order_and_matches_single_calls(embedder):
    outs = list(embedder.embed_sentences(SENTENCES))
    assert [o.shape[1] for o in outs] == [len(s) for s in SENTENCES]
    for s, o in zip(SENTENCES, outs):
        np.testing.assert_allclose(o, embedder.embed_sentence(s), rtol=0, atol=1e-5)


def test_embed_sentences_is_lazy(embedder):
    endless = ([f"w{i}", "end"] for i in itertools.count())
    first = list(itertools.islice(embedder.embed_sentences(endless, batch_size=2), 5))
    assert [o.shape for o in first] == [(3, 2, embedder.output_dim)] * 5


def test_batches_respect_size_and_token_cap(tiny_config):
    e = Embedder(ElmoBiLM(tiny_config), batch_size=4, max_tokens_per_batch=30)
    sentences = [["w"] * n for n in (3, 10, 1, 12, 2, 5, 7, 8, 0)]
    batches = list(e._batches(sentences, 4))
    assert sorted(i for b in batches for i in b) == list(range(9))
    for b in batches:
        lengths = [len(sentences[i]) for i in b]
        assert lengths == sorted(lengths, reverse=True)  # longest first within a batch
        assert len(b) <= 4 and (len(b) == 1 or (lengths[0] + 2) * len(b) <= 30)
    e.stateful = True
    assert e.model.stateful  # one flag: the embedder's is the model's
    assert list(e._batches(sentences, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_vocabulary_cache_gives_the_same_numbers(embedder):
    plain = list(embedder.embed_sentences(SENTENCES))
    assert embedder.cache_vocabulary(["a", "bb", "x", "Hello"]) == 6  # + <S>, </S>
    cached = list(embedder.embed_sentences(SENTENCES))  # a mix of cached and unknown words
    for a, b in zip(plain, cached):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_bad_input(embedder):
    assert list(embedder.embed_sentences([])) == []
    assert embedder.embed_sentence([]).shape == (3, 0, embedder.output_dim)
    assert embedder.embed_sentence(["w"] * 1000).shape == (3, 1000, embedder.output_dim)
    with pytest.raises(TypeError, match="sentence 1 is a str"):
        list(embedder.embed_sentences([["ok"], "not split"]))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Embedder(embedder.model, batch_size=0)


def test_bfloat16_mode_is_close_and_returns_float32(tiny_config):
    model = ElmoBiLM(tiny_config)
    ref = Embedder(model, dtype=torch.float32).embed_sentence(SENTENCES[3])
    low = Embedder(ElmoBiLM(tiny_config).requires_grad_(False), dtype=torch.bfloat16)
    low.model.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})
    out = low.embed_sentence(SENTENCES[3])
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.05


def test_from_pretrained_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="both options_file and weight_file"):
        Embedder.from_pretrained(options_file="o.json")
    with pytest.raises(ValueError, match="a model directory or options_file"):
        Embedder.from_pretrained()
