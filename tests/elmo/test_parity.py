"""Parity with the original TensorFlow ELMo (shared/reference/elmo-tf-fixtures)."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

from elmo import batch_to_ids, load_original


@pytest.fixture
def fixture_model(reference_dir):
    model = load_original(os.path.join(reference_dir, "options.json"),
                          os.path.join(reference_dir, "lm_weights.hdf5"))
    return model.eval()


def _expected(reference_dir, k, i):
    with h5py.File(os.path.join(reference_dir, f"lm_embeddings_{k}.hdf5"), "r") as f:
        e = f[str(i)][...]  # (2, n, 16): forward, backward
    return np.concatenate([e[0], e[1]], axis=-1)


def test_character_encoder_matches_all_vocabulary_words(reference_dir, fixture_model):
    with open(os.path.join(reference_dir, "vocab_test.txt"), encoding="utf-8") as f:
        words = [line.strip() for line in f]
    assert len(words) == 458
    with torch.no_grad():
        got = fixture_model.char_cnn(batch_to_ids([[w] for w in words]))[:, 0].numpy()
    with h5py.File(os.path.join(reference_dir, "elmo_token_embeddings.hdf5"), "r") as f:
        expected = f["embedding"][...]
    assert got.shape == expected.shape == (458, 16)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_stateful_bilm_matches_all_30_sentences(reference_dir, fixture_model):
    with open(os.path.join(reference_dir, "sentences.json"), encoding="utf-8") as f:
        sentences = json.load(f)
    fixture_model.stateful = True
    worst = 0.0
    for i in range(10):
        batch = [sentences[k][i].split() for k in range(3)]
        with torch.no_grad():
            top = fixture_model(batch_to_ids(batch), keep_boundaries=True).layers[-1]  # (3, T+2, 32)
        for k in range(3):
            got = top[k, 1 : len(batch[k]) + 1].numpy()
            expected = _expected(reference_dir, k, i)
            assert got.shape == expected.shape
            worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < 1e-5, worst


def test_stateless_matches_only_the_first_batch(reference_dir, fixture_model):
    """State matters: without it batch 0 still matches, later batches do not."""
    with open(os.path.join(reference_dir, "sentences.json"), encoding="utf-8") as f:
        sentences = json.load(f)
    diffs = []
    for i in (0, 1):
        batch = [sentences[k][i].split() for k in range(3)]
        with torch.no_grad():
            top = fixture_model(batch_to_ids(batch), keep_boundaries=True).layers[-1]
        diffs.append(max(float(np.abs(top[k, 1 : len(batch[k]) + 1].numpy()
                                      - _expected(reference_dir, k, i)).max()) for k in range(3)))
    assert diffs[0] < 1e-5 and diffs[1] > 1e-2, diffs
