"""Weight files: the original layout both ways, our checkpoint format, and clear errors."""

import json
import os
import shutil

import h5py
import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids, load_original, save_original
from elmo.config import ElmoConfig
from elmo.serialization import find_weights, have_safetensors

SENTENCES = [["Weights", "round", "trip", "."], ["ok"]]


def _outputs(model):
    with torch.no_grad():
        return model.eval()(batch_to_ids(SENTENCES)).layers


def test_original_format_round_trip_is_bit_identical(tmp_path, tiny_config):
    model = ElmoBiLM(tiny_config)
    save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    loaded = load_original(tmp_path / "options.json", tmp_path / "weights.hdf5")
    assert loaded.config == tiny_config
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    # ... and saving the loaded model again writes the same arrays
    save_original(loaded, tmp_path / "o2.json", tmp_path / "w2.hdf5")
    with h5py.File(tmp_path / "weights.hdf5") as f1, h5py.File(tmp_path / "w2.hdf5") as f2:
        names = []
        f1.visit(lambda n: names.append(n) if isinstance(f1[n], h5py.Dataset) else None)
        assert len(names) == 1 + 2 * 3 + 2 * 4 + 2 + 2 * 2 * 3  # embed, cnn, highway, proj, lstm
        for n in names:
            assert (f1[n][...] == f2[n][...]).all(), n


def test_fixture_weights_survive_a_save_load_cycle(tmp_path, reference_dir):
    model = load_original(os.path.join(reference_dir, "options.json"),
                          os.path.join(reference_dir, "lm_weights.hdf5"))
    save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    with h5py.File(os.path.join(reference_dir, "lm_weights.hdf5")) as ref, \
            h5py.File(tmp_path / "weights.hdf5") as ours:
        for name in ("char_embed", "CNN/W_cnn_2", "CNN_high_1/W_carry",
                     "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0",
                     "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/B"):
            assert (ref[name][...] == ours[name][...]).all(), name


def test_our_format_round_trip(tmp_path, tiny_config):
    model = ElmoBiLM(tiny_config)
    model.save_pretrained(tmp_path / "m")
    weights = "elmo_weights.safetensors" if have_safetensors() else "elmo_weights.pt"
    assert sorted(os.listdir(tmp_path / "m")) == ["elmo_config.json", weights, weights + ".sha256"]
    loaded = ElmoBiLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)


def test_from_pretrained_reads_an_original_directory(tmp_path, tiny_config):
    model = ElmoBiLM(tiny_config)
    save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    loaded = ElmoBiLM.from_pretrained(tmp_path)
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="no model found"):
        ElmoBiLM.from_pretrained(tmp_path / "nowhere")


def _copy_without(src, dst, skip):
    with h5py.File(src) as fin, h5py.File(dst, "w") as fout:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name != skip:
                fout.create_dataset(name, data=obj[...])
        fin.visititems(visit)


def test_missing_dataset_is_named(tmp_path, tiny_config):
    save_original(ElmoBiLM(tiny_config), tmp_path / "options.json", tmp_path / "weights.hdf5")
    _copy_without(tmp_path / "weights.hdf5", tmp_path / "broken.hdf5", "CNN_proj/W_proj")
    with pytest.raises(ValueError, match=r"'CNN_proj/W_proj' is missing \(expected shape \(20, 6\)\)"):
        load_original(tmp_path / "options.json", tmp_path / "broken.hdf5")


def test_mismatched_options_name_dataset_and_shapes(tmp_path, tiny_config):
    save_original(ElmoBiLM(tiny_config), tmp_path / "options.json", tmp_path / "weights.hdf5")
    options = json.loads((tmp_path / "options.json").read_text())
    options["lstm"]["dim"] = 20
    (tmp_path / "other.json").write_text(json.dumps(options))
    with pytest.raises(ValueError, match=r"LSTMCell/W_0' has shape \(12, 48\), expected \(12, 80\)"):
        load_original(tmp_path / "other.json", tmp_path / "weights.hdf5")


def test_missing_files(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="options file not found"):
        load_original(tmp_path / "none.json", tmp_path / "none.hdf5")
    save_original(ElmoBiLM(tiny_config), tmp_path / "options.json", tmp_path / "weights.hdf5")
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        load_original(tmp_path / "options.json", tmp_path / "none.hdf5")
    shutil.copy(tmp_path / "options.json", tmp_path / "m.json")
    (tmp_path / "d").mkdir()
    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "d")
    os.remove(find_weights(tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match=r"weights \(elmo_weights.safetensors or elmo_weights.pt\) "
                                                "are missing"):
        ElmoBiLM.from_pretrained(tmp_path / "d")
    assert ElmoConfig.load(tmp_path / "d" / "elmo_config.json") == tiny_config
