"""Cached ELMo layers are exactly the biLM's layers; memory and HDF5 stores; keyed by the model."""

import os

import h5py
import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids
from elmo.model import remove_sentence_boundaries
from tasks.cache import LayerCache, model_fingerprint

SENTENCES = [["The", "cat", "sat", "."], ["Hi"], ["A", "much", "longer", "sentence", "than", "the", "others", "!"],
             ["The", "cat", "sat", "."]]


def direct_layers(bilm, sentences):
    bilm.eval()
    with torch.no_grad():
        out = bilm(batch_to_ids(sentences), keep_boundaries=True)
    return torch.stack([remove_sentence_boundaries(x, out.mask)[0] for x in out.layers])  # (L+1, B, T, D)


class Counting:
    def __init__(self, bilm):
        self.calls = 0
        bilm.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_memory_cache_equals_biLM_and_is_computed_once(tiny_config):
    bilm = ElmoBiLM(tiny_config)
    counter = Counting(bilm)
    cache = LayerCache(bilm, batch_size=2)
    assert cache.fill(SENTENCES) == 3  # the repeated sentence is computed once
    assert counter.calls == 2  # 3 sentences, batches of 2
    assert cache.fill(SENTENCES) == 0 and counter.calls == 2
    expected = direct_layers(bilm, SENTENCES)  # one padded batch of all four
    got = cache.batch(SENTENCES)
    assert got.shape == (3, 4, 8, tiny_config.output_dim)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got[:, 1, 1:].abs().max() == 0  # zeros past the one-token sentence
    alone = direct_layers(bilm, [SENTENCES[2]])[:, 0]
    torch.testing.assert_close(cache.get(SENTENCES[2]), alone, atol=1e-6, rtol=0)
    with pytest.raises(KeyError, match="not in the ELMo layer cache"):
        cache.get(["unseen"])


def test_memory_cache_blocks_from_several_fills(tiny_config):
    """Each fill stores its sentences in one block; a batch drawn from one block is one gather,
    a batch mixing blocks is assembled sentence by sentence: the same layers either way."""
    bilm = ElmoBiLM(tiny_config)
    cache = LayerCache(bilm, batch_size=2)
    assert cache.fill(SENTENCES[:2]) == 2
    assert cache.fill(SENTENCES[1:]) == 1  # only the long sentence is new: a second block
    assert len(cache._blocks) == 2 and len(cache) == 3
    assert [b.shape[1] for b in cache._blocks] == [1 + 4 + 1, 1 + 8]  # row 0 is the zero row
    expected = direct_layers(bilm, SENTENCES)
    mixed = cache.batch(SENTENCES)  # rows from both blocks
    torch.testing.assert_close(mixed, expected, atol=1e-6, rtol=0)
    first = cache.batch([SENTENCES[1], SENTENCES[0]], length=6)  # one block, padded past the longest
    assert first.shape == (3, 2, 6, tiny_config.output_dim) and first.dtype == torch.float32
    torch.testing.assert_close(first[:, 0, :1], expected[:, 1, :1], atol=1e-6, rtol=0)
    torch.testing.assert_close(first[:, 1, :4], expected[:, 0, :4], atol=1e-6, rtol=0)
    assert first[:, 0, 1:].abs().max() == 0 and first[:, 1, 4:].abs().max() == 0
    assert cache._blocks[0][:, 0].abs().max() == 0  # the padding row was not written
    with pytest.raises(KeyError, match="not in the ELMo layer cache"):
        cache.batch([SENTENCES[0], ["never", "seen"]])


def test_hdf5_cache_reused_across_runs_and_keyed_by_model(tmp_path, tiny_config):
    path = str(tmp_path / "cache.h5")
    bilm = ElmoBiLM(tiny_config)
    first = LayerCache(bilm, path)
    assert first.fill(SENTENCES[:2]) == 2
    assert first.fill(SENTENCES) == 1  # only the new sentence
    reference = first.batch(SENTENCES)
    first.close()
    assert [f for f in os.listdir(tmp_path)] == ["cache.h5"]  # no temporary file left
    again = LayerCache(bilm, path)
    counter = Counting(bilm)
    assert again.fill(SENTENCES) == 0 and counter.calls == 0
    torch.testing.assert_close(again.batch(SENTENCES), reference, atol=0, rtol=0)
    again.close()
    other = ElmoBiLM(tiny_config)  # different weights: its own group, nothing reused
    assert model_fingerprint(other) != model_fingerprint(bilm)
    cache = LayerCache(other, path)
    assert cache.fill(SENTENCES) == 3
    torch.testing.assert_close(cache.batch(SENTENCES), direct_layers(other, SENTENCES), atol=1e-6, rtol=0)
    cache.close()
    with h5py.File(path, "r") as f:
        assert sorted(f) == sorted([model_fingerprint(bilm), model_fingerprint(other)])
        assert f[model_fingerprint(bilm)].attrs["num_layers"] == 3


def test_fingerprint_tracks_every_weight_and_float16_store(tiny_config):
    bilm = ElmoBiLM(tiny_config)
    before = model_fingerprint(bilm)
    with torch.no_grad():
        list(bilm.parameters())[-1].view(-1)[0] += 1e-3  # one weight of the last layer
    assert model_fingerprint(bilm) != before
    half = LayerCache(bilm, dtype="float16")
    half.fill(SENTENCES)
    full = direct_layers(bilm, SENTENCES)
    assert half.get(SENTENCES[0]).dtype == torch.float32
    torch.testing.assert_close(half.batch(SENTENCES), full, atol=2e-3, rtol=2e-3)


def test_cache_output_is_the_biLM_output_of_a_batch(tiny_config):
    """LayerCache.output: the cached layers as an ElmoOutput, the same as ElmoBiLM gives."""
    from elmo import ElmoOutput, batch_to_tokens
    from tasks.data import TaskBatch

    bilm = ElmoBiLM(tiny_config).eval()
    cache = LayerCache(bilm, batch_size=2)
    cache.fill(SENTENCES)
    out = cache.output(SENTENCES[:3], length=9)
    assert isinstance(out, ElmoOutput)
    assert out.layers.shape == (3, 3, 9, tiny_config.output_dim)
    assert out.mask.sum(1).tolist() == [4, 1, 8] and out.mask.shape == (3, 9)
    with torch.no_grad():
        direct = bilm(batch_to_tokens(SENTENCES[:3]))
    for k in range(3):
        torch.testing.assert_close(out.layers[k][:, :8], direct.layers[k], atol=1e-6, rtol=0)
    assert torch.equal(out.mask[:, :8], direct.mask)
    tokens = batch_to_tokens(SENTENCES[:3])
    moved = TaskBatch(mask=out.mask, tokens=tokens, elmo=out).to(torch.device("cpu"))
    assert isinstance(moved.elmo, ElmoOutput) and torch.equal(moved.elmo.layers, out.layers)
    assert torch.equal(moved.tokens.index, tokens.index) and torch.equal(moved.tokens.token_chars, tokens.token_chars)
