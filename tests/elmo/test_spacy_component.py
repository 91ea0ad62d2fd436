"""The spaCy component "elmo" on spacy.blank("en") (no spaCy model download) with the fixture model."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest

spacy = pytest.importorskip("spacy")

from elmo import Embedder  # noqa: E402

TEXTS = ["The cat sat on the mat.", "ELMo vectors, batched by spaCy's pipe!", "One", "",
         "A somewhat longer sentence with quite a few more tokens than the others have."]


@pytest.fixture
def files(reference_dir):
    return {"options_file": os.path.join(reference_dir, "options.json"),
            "weight_file": os.path.join(reference_dir, "lm_weights.hdf5")}


@pytest.fixture
def embedder(files):
    return Embedder.from_pretrained(**files, device="cpu")


def _nlp(files, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("elmo", config={**files, "device": "cpu", **config})
    return nlp


def test_doc_tensor_token_vectors_and_all_layers(files, embedder):
    nlp = _nlp(files)
    doc = nlp(TEXTS[1])
    tokens = [t.text for t in doc]
    expected = embedder.embed_sentence(tokens)  # (3, n, 32)
    assert doc.tensor.shape == (len(tokens), 32) and doc.tensor.dtype == np.float32
    np.testing.assert_allclose(doc.tensor, expected.mean(0), atol=1e-6)
    np.testing.assert_array_equal(doc[2].vector, doc.tensor[2])
    assert doc._.elmo_layers.shape == (3, len(tokens), 32)
    np.testing.assert_allclose(doc._.elmo_layers, expected, atol=1e-6)
    empty = nlp("")
    assert empty.tensor.shape == (0, 32) and empty._.elmo_layers.shape == (3, 0, 32)


def test_pipe_batches_and_matches_single_docs(files, monkeypatch):
    nlp = _nlp(files, batch_size=2)
    component = nlp.get_pipe("elmo")
    calls = []
    original = component.embedder.embed_sentences

    def counting(sentences, **kw):
        calls.append(len(sentences))
        return original(sentences, **kw)

    monkeypatch.setattr(component.embedder, "embed_sentences", counting)
    docs = list(nlp.pipe(TEXTS * 2, batch_size=4))
    assert calls == [4, 4, 2]  # nlp.pipe's chunks; the embedder batches each by 2 sentences
    assert component.embedder.batch_size == 2
    single = [nlp(text) for text in TEXTS]
    for doc, one in zip(docs, single * 2):
        np.testing.assert_allclose(doc.tensor, one.tensor, atol=1e-6)  # stateless: batch-independent


def test_top_a_fixed_mix_and_bad_configs(files, embedder):
    doc_top = _nlp(files, output="top", layers_extension="")(TEXTS[0])
    expected = embedder.embed_sentence([t.text for t in doc_top])
    np.testing.assert_allclose(doc_top.tensor, expected[-1], atol=1e-6)
    doc_mix = _nlp(files, output=[0.5, 0.25, 0.25])(TEXTS[0])
    np.testing.assert_allclose(doc_mix.tensor, np.tensordot([0.5, 0.25, 0.25], expected, axes=1), atol=1e-5)
    with pytest.raises(ValueError, match="output weights must be 3 numbers"):
        _nlp(files, output=[1.0, 0.0])
    with pytest.raises(ValueError, match="output must be one of"):
        _nlp(files, output="all")
    with pytest.raises(ValueError, match='give config=\\{"model"'):
        spacy.blank("en").add_pipe("elmo")


def test_the_factory_comes_through_the_entry_point(files):
    points = {e.name: e.value for e in importlib.metadata.entry_points(group="spacy_factories")}
    assert points.get("elmo") == "elmo.spacy_component:make_elmo"
    # a fresh process that never imports elmo itself: spaCy finds the factory by its entry point
    code = ("import spacy, sys; assert 'elmo' not in sys.modules; nlp = spacy.blank('en'); "
            f"nlp.add_pipe('elmo', config={{'options_file': {files['options_file']!r}, "
            f"'weight_file': {files['weight_file']!r}, 'device': 'cpu'}}); "
            "assert 'elmo.spacy_component' in sys.modules; print(nlp('Entry points work').tensor.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(3, 32)"


def test_to_disk_and_spacy_load_rebuild_the_component(files, tmp_path):
    nlp = _nlp(files, output=[0.2, 0.3, 0.5])
    before = nlp(TEXTS[0]).tensor
    nlp.to_disk(tmp_path / "pipeline")  # the config names the model; the weights stay where they are
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.pipe_names == ["elmo"]
    np.testing.assert_array_equal(loaded(TEXTS[0]).tensor, before)


def test_without_spacy_the_import_error_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "spacy", None)
    monkeypatch.setitem(sys.modules, "spacy.language", None)
    monkeypatch.delitem(sys.modules, "elmo.spacy_component", raising=False)
    with pytest.raises(ImportError, match=r"pip install elmo-pytorch\[spacy\]"):
        importlib.import_module("elmo.spacy_component")
