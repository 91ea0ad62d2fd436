"""elmo-embed: file in, HDF5 out (AllenNLP's layout), stateful replay, interruption, resume."""

import json
import os

import h5py
import numpy as np
import pytest

from elmo import cli
from elmo.featurizer import Embedder

LINES = ["The cat sat .", "", "Zürich is nice", "a b c d e f g h i j k", "ok"]


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return str(path)


def _read(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][...] for k in f.keys() if k != "sentence_to_index"}
        index = json.loads(f["sentence_to_index"][0]) if "sentence_to_index" in f else None
    return data, index


def test_every_line_with_the_right_shape(tmp_path, model_dir, input_file):
    out = str(tmp_path / "all.hdf5")
    assert cli.main([input_file, out, "--all", "--model", model_dir, "--batch-size", "2", "--quiet"]) == 0
    data, index = _read(out)
    assert sorted(data, key=int) == [str(i) for i in range(len(LINES))]
    for i, line in enumerate(LINES):
        assert data[str(i)].shape == (3, len(line.split()), 12)
        assert data[str(i)].dtype == np.float32
    assert index == {line: str(i) for i, line in enumerate(LINES)}
    assert not os.path.exists(out + ".partial")


def test_top_and_average_are_slices_of_all(tmp_path, model_dir, input_file):
    paths = {}
    for fmt in ("all", "top", "average"):
        paths[fmt] = str(tmp_path / f"{fmt}.hdf5")
        assert cli.main([input_file, paths[fmt], f"--{fmt}", "--model", model_dir, "--quiet"]) == 0
    full, _ = _read(paths["all"])
    top, _ = _read(paths["top"])
    avg, _ = _read(paths["average"])
    for k in full:
        np.testing.assert_array_equal(top[k], full[k][-1])
        np.testing.assert_allclose(avg[k], full[k].mean(0), rtol=0, atol=1e-6)


def test_stateful_replay_reproduces_the_original(tmp_path, reference_dir):
    with open(os.path.join(reference_dir, "sentences.json"), encoding="utf-8") as f:
        sentences = json.load(f)
    lines = [sentences[k][i] for i in range(10) for k in range(3)]  # batch i = row k
    path = tmp_path / "fixture.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "top.hdf5")
    assert cli.main([str(path), out, "--top", "--stateful", "--batch-size", "3", "--quiet",
                     "--options-file", os.path.join(reference_dir, "options.json"),
                     "--weight-file", os.path.join(reference_dir, "lm_weights.hdf5")]) == 0
    data, _ = _read(out)
    worst = 0.0
    for i in range(10):
        for k in range(3):
            with h5py.File(os.path.join(reference_dir, f"lm_embeddings_{k}.hdf5"), "r") as f:
                e = f[str(i)][...]
            expected = np.concatenate([e[0], e[1]], axis=-1)
            worst = max(worst, float(np.abs(data[str(3 * i + k)] - expected).max()))
    assert worst < 1e-5, worst


def test_interrupted_run_leaves_no_output_and_resumes(tmp_path, model_dir, monkeypatch):
    lines = [" ".join(f"w{j}" for j in range(1 + i % 7)) for i in range(80)]
    src = tmp_path / "many.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "out.hdf5")
    args = [str(src), out, "--model", model_dir, "--batch-size", "2", "--quiet"]
    assert cli.main(args + ["--no-sentence-index"]) == 0
    clean, _ = _read(out)
    os.remove(out)

    real = Embedder._embed_list
    calls = {"n": 0}

    def flaky(self, sentences, batch_size):
        calls["n"] += 1
        if calls["n"] == 2:  # the second window of 32 lines: as if Ctrl-C arrived
            raise KeyboardInterrupt
        return real(self, sentences, batch_size)

    monkeypatch.setattr(Embedder, "_embed_list", flaky)
    assert cli.main(args) == 130
    assert not os.path.exists(out) and os.path.exists(out + ".partial")
    with h5py.File(out + ".partial", "r") as f:
        assert len(f.keys()) == 32
    monkeypatch.setattr(Embedder, "_embed_list", real)
    assert cli.main(args + ["--resume"]) == 0
    resumed, index = _read(out)
    assert sorted(resumed) == sorted(clean)
    assert index == {line: str(i) for i, line in enumerate(lines)}  # repeated lines: the last key
    for k in clean:
        np.testing.assert_allclose(resumed[k], clean[k], rtol=0, atol=1e-6)


def test_argument_errors(tmp_path, model_dir, input_file, capsys):
    out = str(tmp_path / "x.hdf5")
    assert cli.main([input_file, out, "--quiet"]) == 2
    assert "either --model DIR or both" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing.txt"), out, "--model", model_dir]) == 2
    assert "input file not found" in capsys.readouterr().err
    assert cli.main([input_file, out, "--model", str(tmp_path)]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert cli.main([input_file, out, "--model", model_dir, "--stateful", "--resume", "--quiet"]) == 2
    assert "resume cannot be combined with stateful" in capsys.readouterr().err
    assert not os.path.exists(out)
