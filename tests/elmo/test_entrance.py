"""One input (TokenBatch), one entrance (ElmoBiLM.forward), one output (ElmoOutput)."""

import pytest
import torch

from elmo import Elmo, ElmoBiLM, ElmoOutput, TokenBatch, batch_to_ids, batch_to_tokens
from elmo.chars import distinct_tokens
from elmo.model import add_sentence_boundaries

SENTENCES = [["the", "cat", "the", "."], [], ["a", "cat", "x" * 60]]


def test_batch_to_tokens_holds_each_distinct_token_once():
    tokens = batch_to_tokens(SENTENCES)
    assert tokens.token_chars.shape == (5, 50)  # the, cat, ., a, x*60
    assert tokens.index.tolist() == [[0, 1, 0, 2], [-1, -1, -1, -1], [3, 1, 4, -1]]
    assert tokens.mask.tolist() == [[True] * 4, [False] * 4, [True] * 3 + [False]]
    assert torch.equal(tokens.char_ids(), batch_to_ids(SENTENCES))
    assert batch_to_tokens(SENTENCES, min_length=6).index.shape == (3, 6)
    words, index = distinct_tokens([["b", "a", "b"]])
    assert words == ["b", "a"] and index.tolist() == [[0, 1, 0]]
    empty = batch_to_tokens([])
    assert empty.token_chars.shape == (0, 50) and empty.index.shape == (0, 0)
    assert empty.char_ids().shape == (0, 0, 50)
    with pytest.raises(TypeError, match="sentence 0 is a str"):
        batch_to_tokens(["not split"])


def test_from_char_ids_is_the_same_batch_sorted_like_torch_unique():
    ids = batch_to_ids(SENTENCES)
    tokens = TokenBatch.from_char_ids(ids)
    assert tokens.token_chars.shape == (5, 50)
    assert torch.equal(tokens.token_chars, torch.unique(tokens.token_chars, dim=0))  # sorted rows
    assert torch.equal(tokens.char_ids(), ids)
    assert torch.equal(tokens.mask, (ids > 0).any(-1))
    none = TokenBatch.from_char_ids(torch.zeros(2, 3, 50, dtype=torch.long))
    assert none.token_chars.shape == (0, 50) and (none.index == -1).all()


def test_boundaries_are_two_more_rows_and_positions(tiny_config):
    model = ElmoBiLM(tiny_config)
    tokens = add_sentence_boundaries(batch_to_tokens(SENTENCES), model.boundary_chars)
    assert tokens.token_chars.shape == (7, 50)
    assert tokens.index.tolist() == [[5, 0, 1, 0, 2, 6], [5, 6, -1, -1, -1, -1], [5, 3, 1, 4, 6, -1]]
    expected = batch_to_ids([["<S>", *s, "</S>"] for s in SENTENCES])
    assert torch.equal(tokens.char_ids(), expected)


def test_token_batch_and_char_ids_give_identical_outputs(tiny_config):
    torch.manual_seed(0)
    model = ElmoBiLM(tiny_config).eval()
    with torch.no_grad():
        plain = model(batch_to_ids(SENTENCES))
        batch = model(batch_to_tokens(SENTENCES))
        kept = model(batch_to_tokens(SENTENCES), keep_boundaries=True)
    assert isinstance(plain, ElmoOutput) and plain.representations == ()
    assert plain.mask.tolist() == batch_to_tokens(SENTENCES).mask.tolist()
    assert kept.mask.sum(1).tolist() == [6, 2, 5]
    D = model.output_dim
    for a, b, k in zip(plain.layers, batch.layers, kept.layers):
        assert a.shape == (3, 4, D) and k.shape == (3, 6, D)
        assert torch.equal(a, b)  # bit-identical: the same distinct tokens, encoded the same way
        # the default output is the kept one without <S> (position 0) and </S> (after each row)
        assert torch.equal(a[0], k[0, 1:5])
        assert torch.equal(a[2, :3], k[2, 1:4]) and a[2, 3].abs().max() == 0
        assert a[1].abs().max() == 0
    for (fa, ba), (fb, bb) in zip(plain.state, batch.state):  # the final states are the same too
        for x, y in zip(fa + ba, fb + bb):
            assert torch.equal(x, y)


def test_given_boundaries_and_token_vectors(tiny_config):
    torch.manual_seed(0)
    model = ElmoBiLM(tiny_config).eval()
    windows = [["<S>", "a", "cat", "</S>", "<S>"], ["cat", "."]]
    with torch.no_grad():
        given = model(batch_to_tokens(windows), add_boundaries=False)
        tokens = batch_to_tokens(SENTENCES)
        vectors = model.char_cnn.encode_tokens(tokens.token_chars)
        with_vectors = model(tokens, token_vectors=vectors)
        reference = model(tokens)
    assert given.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert given.layers[-1].shape == (2, 5, model.output_dim)  # every position as given
    for a, b in zip(with_vectors.layers, reference.layers):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"token_vectors must be \(distinct tokens, projection_dim\)"):
        model(tokens, token_vectors=vectors[:2])


def test_one_direction_is_that_half_of_every_layer(tiny_config):
    """directions="forward" / "backward": the same entrance, one stack run; every layer (the
    character layer too) is that direction's half of the two-direction output, bit for bit, and the
    other stack's state comes back as it went in."""
    torch.manual_seed(0)
    model = ElmoBiLM(tiny_config).eval()
    tokens = batch_to_tokens(SENTENCES)
    state = [tuple(tuple(torch.randn_like(x) for x in st) for st in pair)
             for pair in model.bilm.default_state(3)]
    P = tiny_config.bilm.projection_dim
    with torch.no_grad():
        both = model(tokens, state)
        for d, directions in enumerate(("forward", "backward")):
            one = model(tokens, state, directions=directions)
            assert torch.equal(one.mask, both.mask) and len(one.layers) == len(both.layers)
            for a, b in zip(one.layers, both.layers):
                assert a.shape == (3, 4, P) and torch.equal(a, b[..., d * P : (d + 1) * P])
            for pair_one, pair_both, given in zip(one.state, both.state, state):
                assert all(torch.equal(x, y) for x, y in zip(pair_one[d], pair_both[d]))
                assert pair_one[1 - d] is given[1 - d]
    with pytest.raises(ValueError, match="directions must be one of both, forward, backward"):
        model(tokens, directions="forwards")


def test_elmo_mixes_the_same_output(tiny_config):
    torch.manual_seed(0)
    bilm = ElmoBiLM(tiny_config).eval()
    elmo = Elmo(bilm, num_output_representations=1, dropout=0.0)
    with torch.no_grad():
        out = elmo(batch_to_tokens(SENTENCES))
        layers = bilm(batch_to_tokens(SENTENCES)).layers
    assert out.representations[0].shape == (3, 4, bilm.output_dim)
    for a, b in zip(out.layers, layers):
        assert torch.equal(a, b)
    torch.testing.assert_close(out.representations[0], sum(layers) / 3)


def test_bad_token_batches(tiny_config):
    model = ElmoBiLM(tiny_config)
    tokens = batch_to_tokens(SENTENCES)
    with pytest.raises(ValueError, match=r"TokenBatch.index must lie in \[-1, 5\)"):
        model(TokenBatch(tokens.token_chars, tokens.index.clamp(max=5) + 1))
    with pytest.raises(ValueError, match=r"token_chars \(tokens, 50\)"):
        model(TokenBatch(tokens.token_chars[:, :10], tokens.index))
    with pytest.raises(ValueError, match=r"must lie in \[0, 262\)"):
        model(TokenBatch(tokens.token_chars + 300, tokens.index))
    with pytest.raises(TypeError, match="ElmoBiLM takes a TokenBatch or char ids"):
        model([["the", "cat"]])


def test_warm_state_from_a_token_batch_equals_from_char_ids(tiny_config):
    torch.manual_seed(0)
    text = [["<S>", "Some", "text", ".", "</S>", "<S>", "Some"]]
    a, b = ElmoBiLM(tiny_config), ElmoBiLM(tiny_config)
    b.load_state_dict(a.state_dict())
    a.set_warm_state(batch_to_ids(text))
    b.set_warm_state(batch_to_tokens(text))
    for (fa, ba), (fb, bb) in zip(a.bilm.default_state(1), b.bilm.default_state(1)):
        for x, y in zip(fa + ba, fb + bb):
            assert torch.equal(x, y) and x.abs().max() > 0
    with pytest.raises(ValueError, match=r"one row \(1, T, C\) or a TokenBatch of one row, got \(2, 7\)"):
        a.set_warm_state(batch_to_tokens(text * 2))
