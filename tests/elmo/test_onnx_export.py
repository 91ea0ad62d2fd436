"""ONNX export: onnxruntime's layers match torch's (Embedder, stateless) to 1e-4 at varied lengths."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from elmo import ElmoBiLM, Embedder, batch_to_ids, load_original  # noqa: E402
from elmo.onnx_export import OnnxBiLM, export_onnx  # noqa: E402
from tests.conftest import make_tiny_config  # noqa: E402


def _sentences(reference_dir):
    with open(os.path.join(reference_dir, "sentences.json")) as f:
        return [s.split() for part in json.load(f) for s in part]


def _check(model, path, batches, atol=1e-4):
    embedder = Embedder(model, device="cpu")
    session = OnnxBiLM(path, threads=1)
    worst = 0.0
    for batch in batches:
        layers, mask = session(batch_to_ids(batch))
        T = max(len(s) for s in batch)
        assert layers.shape == (model.num_layers, len(batch), T, model.output_dim)
        assert layers.dtype == np.float32 and mask.dtype == np.bool_
        np.testing.assert_array_equal(mask, [[t < len(s) for t in range(T)] for s in batch])
        for i, (sentence, expected) in enumerate(zip(batch, embedder.embed_batch(batch))):
            worst = max(worst, float(np.abs(layers[:, i, : len(sentence)] - expected).max()))
            assert not layers[:, i, len(sentence):].any()  # zeros at padding
    assert worst < atol, worst
    return worst


@pytest.fixture(scope="module")
def fixture_export(tmp_path_factory):
    from tests.conftest import REFERENCE_DIR

    if not os.path.isfile(os.path.join(REFERENCE_DIR, "lm_weights.hdf5")):
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR}")
    model = load_original(os.path.join(REFERENCE_DIR, "options.json"),
                          os.path.join(REFERENCE_DIR, "lm_weights.hdf5"))
    path = str(tmp_path_factory.mktemp("onnx") / "fixture.onnx")
    export_onnx(model, path)
    return model, path


def test_fixture_model_matches_torch_at_varied_lengths_and_batches(fixture_export, reference_dir):
    model, path = fixture_export
    sentences = _sentences(reference_dir)
    batches = [sentences[:1], sentences[:3], sentences, [["a"]], [["x"] * 60, ["y"]],
               [s[:k] for k, s in zip(range(1, 9), sentences)],
               [["w" * 45, "b", "w" * 45], ["hello"]],  # longer words than the export's example
               [["Repeated", "words", "Repeated", "words"], ["words"]]]  # deduplicated tokens
    worst = _check(model, path, batches)
    assert worst < 5e-6  # float32 both sides; the bar above is the 1e-4


def test_embed_batch_gives_the_embedders_arrays(fixture_export):
    model, path = fixture_export
    sentences = [["The", "cat", "sat", "."], [], ["Hi"]]
    ours = Embedder(model, device="cpu").embed_batch(sentences)
    theirs = OnnxBiLM(path).embed_batch(sentences)
    assert [a.shape for a in theirs] == [a.shape for a in ours] == [(3, 4, 32), (3, 0, 32), (3, 1, 32)]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert OnnxBiLM(path).embed_batch([]) == []
    with pytest.raises(TypeError, match="sentence 1 is a str"):  # as Embedder: not split into letters
        OnnxBiLM(path).embed_batch([["ok"], "The cat sat ."])


def test_the_graph_has_dynamic_batch_and_length_axes(fixture_export):
    _, path = fixture_export
    graph = onnx.load(path).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in list(graph.input) + list(graph.output)}
    assert dims["char_ids"] == ["batch", "tokens", 50]
    assert dims["layers"][1:3] == ["batch", "tokens"]
    assert dims["mask"] == ["batch", "tokens"]
    assert any(node.op_type == "Loop" for node in graph.node)  # the recurrence, not unrolled


def test_the_graph_is_traced_from_the_models_own_modules(fixture_export):
    """The exporter records each node's Python stack: the nodes come from ElmoBiLM.forward, BiLM
    and the character CNN's modules, and elmo.onnx_export contributes only GraphBiLM.forward's
    stacking of the layers (no computation of its own)."""
    _, path = fixture_export
    frames = set()

    def walk(graph):
        for node in graph.node:
            for prop in node.metadata_props:
                if prop.key.endswith("stack_trace"):
                    frames.update(line.split("elmo/", 1)[1] for line in prop.value.splitlines()
                                  if 'File "' in line and "/elmo/" in line)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)

    walk(onnx.load(path).graph)
    files = {frame.split('"')[0] for frame in frames}
    assert {"model.py", "bilm.py", "char_cnn.py"} <= files, files
    assert {frame.rsplit(", in ", 1)[1] for frame in frames if frame.startswith("onnx_export.py")} == {"forward"}
    assert any(frame.startswith("model.py") and frame.endswith("in forward") for frame in frames)


@pytest.fixture(scope="module")
def warm_export(tmp_path_factory):
    """A tiny model with a warm state, no skip connections and no clips, exported in training
    mode (one export for the tests below: each takes seconds)."""
    model = ElmoBiLM(make_tiny_config(use_skip_connections=False, cell_clip=None, proj_clip=None))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.set_warm_state(batch_to_ids([["<S>", "warm", "up", "text", "</S>"]]))
    model.train()
    path = tmp_path_factory.mktemp("warm") / "m.onnx"
    export_onnx(model, path)
    return model, path


def test_warm_state_no_skip_no_clip_and_the_model_is_left_as_it_was(warm_export):
    model, path = warm_export
    assert model.bilm.forward_layers[0].initial_h.abs().sum() > 0
    assert model.training and next(model.parameters()).dtype == torch.float32
    _check(model.eval(), str(path),
           [[["One"]], [["Two", "words"], ["and", "three", "here"]], [["z"] * 25]])


def test_other_cells_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="cell='gru'"):
        export_onnx(ElmoBiLM(make_tiny_config(cell="gru")), tmp_path / "g.onnx")
    assert not os.path.exists(tmp_path / "g.onnx")
    from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig

    lm_only = ElmoConfig(CharCNNConfig(embedding_dim=4, filters=[[1, 4], [2, 8]], n_highway=1, projection=False),
                         BiLMConfig(dim=12, projection_dim=6, n_layers=1))
    with pytest.raises(ValueError, match="char_cnn.projection=false"):  # before tracing, not inside it
        export_onnx(ElmoBiLM(lm_only), tmp_path / "p.onnx")
    assert not os.path.exists(tmp_path / "p.onnx")


def test_elmo_export_onnx_command(tmp_path, tiny_config, caplog):
    import logging

    from pretrain.cli import export_main

    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "m")
    out = tmp_path / "m.onnx"
    caplog.set_level(logging.INFO)
    assert export_main([str(tmp_path / "m"), "--onnx", str(out)]) == 0
    noise = [r.name for r in caplog.records if r.name.startswith(("torch", "onnxscript", "onnx_ir"))]
    assert not noise  # the exporter's hundreds of INFO records stay out of the command's output
    assert os.path.getsize(out) > 0
    session = OnnxBiLM(out)
    layers, _ = session(batch_to_ids([["An", "export"]]))
    assert layers.shape == (3, 1, 2, 12)
    assert export_main([str(tmp_path / "m"), "--onnx", str(out)]) == 2  # exists, no --force
    assert export_main([str(tmp_path / "m"), "--onnx", str(out), "--force"]) == 0
    assert export_main([str(tmp_path / "m")]) == 2  # nothing to write
    assert export_main([str(tmp_path / "m"), "--options-file", str(tmp_path / "o.json")]) == 2


def test_missing_extras_are_named(tmp_path, tiny_config, monkeypatch, warm_export):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install elmo-pytorch\[onnx\]"):
        OnnxBiLM(warm_export[1])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install elmo-pytorch\[onnx\]"):
        export_onnx(ElmoBiLM(tiny_config), tmp_path / "n.onnx")
    assert not os.path.exists(tmp_path / "n.onnx")
