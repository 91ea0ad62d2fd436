"""ElmoBiLM / Elmo: shapes, determinism, state, gradients."""

import os

import pytest
import torch

from elmo import Elmo, ElmoBiLM, batch_to_ids, load_original
from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig
from elmo.model import remove_sentence_boundaries

SENTENCES = [["The", "cat", "sat", "."], ["Hello", "Zürich"], ["A", "much", "longer", "sentence",
             "with", "seven", "tokens"]]


@pytest.fixture
def model(tiny_config):
    return ElmoBiLM(tiny_config).eval()


def test_shapes_at_every_stage(model, tiny_config):
    ids = batch_to_ids(SENTENCES)
    assert ids.shape == (3, 7, 50)
    out = model(ids, keep_boundaries=True)
    P = tiny_config.bilm.projection_dim
    assert len(out.layers) == 3
    assert all(layer.shape == (3, 9, 2 * P) for layer in out.layers)
    assert out.mask.tolist()[1] == [True] * 4 + [False] * 5
    assert torch.equal(out.layers[0][..., :P], out.layers[0][..., P:])  # [char; char]
    assert all((layer[~out.mask] == 0).all() for layer in out.layers)  # padding stays zero
    (h, c), _ = out.state[0]
    assert h.shape == (3, P) and c.shape == (3, tiny_config.bilm.dim)
    stripped, mask = remove_sentence_boundaries(out.layers[-1], out.mask)
    assert stripped.shape == (3, 7, 2 * P) and mask.sum(1).tolist() == [4, 2, 7]
    torch.testing.assert_close(stripped[1, :2], out.layers[-1][1, 1:3])


def test_elmo_module_outputs(model):
    elmo = Elmo(model, num_output_representations=2, dropout=0.0)
    out = elmo(batch_to_ids(SENTENCES))
    assert len(out.representations) == 2
    assert out.representations[0].shape == (3, 7, model.output_dim)
    assert out.mask.sum(1).tolist() == [4, 2, 7]
    # equal mixing weights and gamma 1 -> the average of the layers
    torch.testing.assert_close(out.representations[0], sum(out.layers) / 3)
    kept = Elmo(model, keep_sentence_boundaries=True, dropout=0.0)(batch_to_ids(SENTENCES))
    assert kept.representations[0].shape == (3, 9, model.output_dim)
    assert not any(p.requires_grad for p in elmo.bilm.parameters())
    assert all(p.requires_grad for p in elmo.scalar_mixes.parameters())


def _rows(model, sentences):
    with torch.no_grad():
        out = model(batch_to_ids(sentences), keep_boundaries=True)
    return [torch.stack(out.layers)[:, b, 1 : len(s) + 1] for b, s in enumerate(sentences)]


def test_stateless_embedding_is_independent_of_batch(reference_dir):
    model = load_original(os.path.join(reference_dir, "options.json"),
                          os.path.join(reference_dir, "lm_weights.hdf5")).eval()
    alone = [_rows(model, [s])[0] for s in SENTENCES]
    batched = _rows(model, SENTENCES)
    reordered = _rows(model, SENTENCES[::-1])[::-1]
    padded = _rows(model, SENTENCES + [["x"] * 30])[:3]  # a long row forces extra padding
    repeated = _rows(model, SENTENCES)  # calling twice changes nothing (no hidden state)
    for variant in (batched, reordered, padded, repeated):
        for a, b in zip(alone, variant):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_stateful_mode_carries_and_resets(model):
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        first = model(ids).layers[-1]
        model.stateful = True
        a = model(ids).layers[-1]
        b = model(ids).layers[-1]
        model.reset_states()
        c = model(ids).layers[-1]
    torch.testing.assert_close(a, first)  # fresh state = stateless
    assert (a - b).abs().max() > 1e-4  # the carried state changes the next batch
    torch.testing.assert_close(c, a)


def test_stateful_smaller_batch_keeps_other_rows(model):
    model.stateful = True
    with torch.no_grad():
        model(batch_to_ids(SENTENCES))
        before = [t.clone() for t in model._state[0][0]]
        model(batch_to_ids(SENTENCES[:1]))
    after = model._state[0][0]
    assert not torch.equal(after[0][0], before[0][0])
    torch.testing.assert_close(after[0][1:], before[0][1:], rtol=0, atol=0)


def test_warm_state_is_deterministic_and_saved(model, tmp_path):
    ids = batch_to_ids(SENTENCES[:1])
    with torch.no_grad():
        cold = model(ids).layers[-1]
        model.set_warm_state(batch_to_ids([["<S>", "Some", "text", ".", "</S>"]]))
        warm1 = model(ids).layers[-1]
        warm2 = model(ids).layers[-1]
    assert (cold - warm1).abs().max() > 1e-4
    torch.testing.assert_close(warm1, warm2, rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        loaded = ElmoBiLM.from_pretrained(tmp_path).eval()(ids).layers[-1]
    torch.testing.assert_close(loaded, warm1, rtol=0, atol=0)


def test_every_parameter_gets_a_finite_nonzero_gradient(tiny_config):
    model = ElmoBiLM(tiny_config).train()
    out = model(batch_to_ids(SENTENCES), dropout=0.1)
    loss = sum((layer * torch.randn_like(layer)).sum() for layer in out.layers)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs(model):
    with torch.no_grad():
        empty_batch = model(batch_to_ids([]), keep_boundaries=True)
        assert empty_batch.layers[0].shape == (0, 2, model.output_dim)
        empty_sentence = model(batch_to_ids([[], ["a"]]), keep_boundaries=True)
        assert empty_sentence.mask.sum(1).tolist() == [2, 3]
        long = model(batch_to_ids([["tok"] * 1000]), keep_boundaries=True)
        assert long.layers[-1].shape == (1, 1002, model.output_dim)
        assert torch.isfinite(long.layers[-1]).all()
        weird = model(batch_to_ids([["x" * 300, "naïve", "\x00\x07", "日本語"]]))
        assert torch.isfinite(weird.layers[-1]).all()
    with pytest.raises(ValueError, match=r"char_ids must be \(batch, tokens, 50\)"):
        model(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 262\)"):
        model(torch.full((1, 1, 50), 300, dtype=torch.long))


def test_a_model_without_character_projection_is_a_language_model_only(tmp_path):
    """char_cnn.projection false (Kim et al. 2016): the first LSTM layer reads the highway
    features; the ELMo entrance with boundaries refuses it, the LM path runs, our format saves and
    loads it, the original format refuses it."""
    config = ElmoConfig(CharCNNConfig(embedding_dim=4, filters=[[1, 3], [2, 4]], n_highway=1,
                                      activation="tanh", projection=False),
                        BiLMConfig(dim=6, projection_dim=5, n_layers=2, cell_clip=None, proj_clip=None))
    assert config.token_dim == 7
    torch.manual_seed(0)
    model = ElmoBiLM(config).eval()
    assert not hasattr(model.char_cnn.projection, "weight")
    assert model.bilm.forward_layers[0].input_dim == 7 and model.bilm.forward_layers[1].input_dim == 5
    ids = batch_to_ids([["<S>", "a", "bc", "</S>"], ["<S>", "de", "</S>"]])
    with pytest.raises(ValueError, match="no character projection"):
        model(ids)
    from elmo.featurizer import Embedder
    from tasks.cache import LayerCache
    for build in (lambda: Elmo(model), lambda: Embedder(model, device="cpu"), lambda: LayerCache(model)):
        with pytest.raises(ValueError, match="language model only"):
            build()  # refused before any work
    out = model(ids, add_boundaries=False)
    assert [tuple(x.shape) for x in out.layers] == [(2, 4, 14), (2, 4, 10), (2, 4, 10)]
    # The token layer is the highway output itself: equal to the character encoder's.
    vectors = model.char_cnn.encode_characters(ids[0])  # (4, 7)
    torch.testing.assert_close(out.layers[0][0, :, :7], vectors, rtol=0, atol=0)
    with pytest.raises(ValueError, match="original format has no such model"):
        config.to_options()
    model.save_pretrained(tmp_path / "m")
    again = ElmoBiLM.from_pretrained(tmp_path / "m").eval()
    for a, b in zip(out.layers, again(ids, add_boundaries=False).layers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_skip_connections"):
        ElmoConfig(config.char_cnn, BiLMConfig(dim=6, projection_dim=5, input_skip_connections=True))
