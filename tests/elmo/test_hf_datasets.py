"""ELMo vectors added to a ``datasets.Dataset`` of CoNLL-2003 sentences read from the local files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from elmo import Embedder  # noqa: E402
from elmo.hf_datasets import add_elmo_vectors, as_layers, elmo_map_function  # noqa: E402

N = 120


def _conll_sentences(path: str, limit: int):
    """CoNLL-2003 (word POS chunk NER per line, blank lines between sentences) -> examples."""
    tokens, tags, n = [], [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] != "-DOCSTART-":
                tokens.append(parts[0])
                tags.append(parts[-1])
            elif tokens:
                yield {"tokens": tokens, "ner_tags": tags}
                tokens, tags, n = [], [], n + 1
                if n == limit:
                    return
    if tokens:
        yield {"tokens": tokens, "ner_tags": tags}


@pytest.fixture
def conll(data_dir, tmp_path):
    path = os.path.join(data_dir, "conll2003", "valid.txt")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found; run scripts/get_data.py")
    return datasets.Dataset.from_generator(_conll_sentences, gen_kwargs={"path": path, "limit": N},
                                           cache_dir=str(tmp_path / "hf-cache"))


@pytest.fixture
def embedder(reference_dir):
    return Embedder.from_pretrained(options_file=os.path.join(reference_dir, "options.json"),
                                    weight_file=os.path.join(reference_dir, "lm_weights.hdf5"),
                                    device="cpu", batch_size=16)


def test_average_vectors_match_the_embedder_and_go_through_the_arrow_cache(conll, embedder, tmp_path):
    assert conll.num_rows == N
    out_file = str(tmp_path / "with-elmo.arrow")
    ds = add_elmo_vectors(conll, embedder, output="average", batch_size=32, writer_batch_size=16,
                          cache_file_name=out_file)
    assert ds.column_names == ["tokens", "ner_tags", "elmo"]
    assert [f["filename"] for f in ds.cache_files] == [out_file]
    import pyarrow as pa

    with pa.memory_map(out_file) as source:  # written in pieces of writer_batch_size rows
        batches = pa.ipc.open_stream(source).read_all().to_batches()
    assert [b.num_rows for b in batches] == [16] * (N // 16) + ([N % 16] if N % 16 else [])
    rows = ds.with_format("numpy")
    for i in (0, 7, N - 1):
        tokens = list(conll[i]["tokens"])
        vectors = rows[i]["elmo"]
        assert vectors.shape == (len(tokens), 32) and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, embedder.embed_sentence(tokens, output="average"), atol=1e-6)


def test_all_layers_top_and_a_fixed_mix(conll, embedder):
    small = conll.select(range(20))
    all_layers = add_elmo_vectors(small, embedder, output="all", batch_size=8).with_format("numpy")
    top = add_elmo_vectors(small, embedder, output="top", column="top").with_format("numpy")
    mix = small.map(elmo_map_function(embedder, output=[0.2, 0.3, 0.5], column="mix"), batched=True,
                    batch_size=5).with_format("numpy")
    for i in (0, 19):
        tokens = list(small[i]["tokens"])
        expected = embedder.embed_sentence(tokens)  # (3, n, 32)
        assert all_layers[i]["elmo"].shape == (len(tokens), 3, 32)
        np.testing.assert_allclose(as_layers(all_layers[i]["elmo"]), expected, atol=1e-6)
        np.testing.assert_allclose(top[i]["top"], expected[-1], atol=1e-6)
        mixed = np.asarray(mix[i]["mix"], dtype=np.float32)
        np.testing.assert_allclose(mixed, np.tensordot([0.2, 0.3, 0.5], expected, axes=1), atol=1e-5)


def test_bad_columns_are_named(conll, embedder):
    with pytest.raises(KeyError, match="no column 'words'"):
        add_elmo_vectors(conll, embedder, tokens_column="words")
    with pytest.raises(ValueError, match="already has a column 'ner_tags'"):
        add_elmo_vectors(conll, embedder, column="ner_tags")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_column_matches_the_cpu(conll, embedder, reference_dir):
    gpu = Embedder.from_pretrained(options_file=os.path.join(reference_dir, "options.json"),
                                   weight_file=os.path.join(reference_dir, "lm_weights.hdf5"),
                                   device="cuda", batch_size=16)
    small = conll.select(range(16))
    on_gpu = add_elmo_vectors(small, gpu, output="top").with_format("numpy")
    on_cpu = add_elmo_vectors(small, embedder, output="top").with_format("numpy")
    for i in range(16):
        np.testing.assert_allclose(on_gpu[i]["elmo"], on_cpu[i]["elmo"], atol=1e-4)


def test_a_second_identical_map_is_read_from_the_arrow_cache(conll, reference_dir, monkeypatch):
    def fresh():  # the same weights, a new embedder object
        return Embedder.from_pretrained(options_file=os.path.join(reference_dir, "options.json"),
                                        weight_file=os.path.join(reference_dir, "lm_weights.hdf5"),
                                        device="cpu", batch_size=16)

    small = conll.select(range(10))
    first = add_elmo_vectors(small, fresh(), output="top")
    calls = []
    original = Embedder.embed_sentences

    def spy(self, sentences, **kw):
        calls.append(len(sentences))
        return original(self, sentences, **kw)

    monkeypatch.setattr(Embedder, "embed_sentences", spy)
    again = add_elmo_vectors(small, fresh(), output="top")
    assert calls == []  # nothing embedded: the fingerprint (data, function, weights) matched
    assert again.cache_files == first.cache_files
    add_elmo_vectors(small, fresh(), output="average")  # another output is computed
    assert sum(calls) == 10
