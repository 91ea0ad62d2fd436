"""elmo-embed / elmo-export never overwrite what a user owns, never resume into a wrong file, and
answer bad input with one line and exit code 2 (issue 14, points 1, 3, 5, 6, 7, 8)."""

import errno
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from elmo import ElmoBiLM, io as eio
from elmo import cli
from elmo.dump import COMPLETE_ATTR, FINGERPRINT_ATTR
from elmo.featurizer import Embedder
from elmo.weights import load_original, save_original

LINES = [" ".join(f"w{j}" for j in range(1 + i % 7)) for i in range(80)]


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return str(path)


def _weights(model_dir):
    return os.path.join(model_dir, next(n for n in sorted(os.listdir(model_dir))
                                        if n.startswith("elmo_weights") and "sha" not in n))


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f.keys() if k != "sentence_to_index"}


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("elmo-embed: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _interrupt_after_first_window(monkeypatch):
    """Make the second window raise KeyboardInterrupt (as Ctrl-C would); returns an undo."""
    real = Embedder._embed_list
    calls = {"n": 0}

    def flaky(self, sentences, batch_size):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, sentences, batch_size)

    monkeypatch.setattr(Embedder, "_embed_list", flaky)
    return lambda: monkeypatch.setattr(Embedder, "_embed_list", real)


# -- point 1: outputs ---------------------------------------------------------------------------
def test_output_equal_to_an_input_is_refused_even_with_force(tmp_path, model_dir, src, capsys):
    before = open(src, "rb").read()
    os.symlink(src, tmp_path / "link.txt")
    os.link(src, tmp_path / "hard.txt")
    weights = _weights(model_dir)
    weight_bytes = open(weights, "rb").read()
    for out in (src, str(tmp_path / "link.txt"), str(tmp_path / "hard.txt")):
        for extra in ([], ["--force"]):
            assert cli.main([src, out, "--model", model_dir, "--quiet", *extra]) == 2
            _one_error_line(capsys, "is the input file", "choose another output path")
    assert cli.main([src, weights, "--model", model_dir, "--quiet", "--force"]) == 2
    _one_error_line(capsys, "is the input file")
    assert open(src, "rb").read() == before
    assert open(weights, "rb").read() == weight_bytes  # the weights file, byte for byte
    assert ElmoBiLM.from_pretrained(model_dir) is not None


def test_existing_output_needs_force_or_a_matching_resume(tmp_path, model_dir, src, capsys):
    out = tmp_path / "out.hdf5"
    out.write_bytes(b"precious")
    args = [src, str(out), "--model", model_dir, "--quiet", "--batch-size", "8"]
    assert cli.main(args) == 2
    _one_error_line(capsys, str(out), "already exists; pass --force")
    assert out.read_bytes() == b"precious"
    assert cli.main(args + ["--resume"]) == 2  # not our file: --resume does not overwrite it
    _one_error_line(capsys, "already exists", "not a readable HDF5 file", "--force")
    assert out.read_bytes() == b"precious"
    assert cli.main(args + ["--force"]) == 0
    first = _read(out)
    mtime = os.stat(out).st_mtime_ns
    assert cli.main(args + ["--resume"]) == 0  # same input, model, layout: already complete
    assert os.stat(out).st_mtime_ns == mtime
    assert cli.main(args + ["--resume", "--top"]) == 2
    _one_error_line(capsys, "already exists", "output layout")
    assert sorted(_read(out)) == sorted(first)


def test_a_partial_file_is_not_discarded_without_resume_or_force(tmp_path, model_dir, src,
                                                                 monkeypatch, capsys):
    out = str(tmp_path / "out.hdf5")
    args = [src, out, "--model", model_dir, "--quiet", "--batch-size", "2"]
    undo = _interrupt_after_first_window(monkeypatch)
    assert cli.main(args) == 130
    undo()
    capsys.readouterr()
    kept = _read(out + ".partial")
    assert cli.main(args) == 2
    _one_error_line(capsys, out + ".partial", "--resume to continue it or --force to start over")
    assert sorted(_read(out + ".partial")) == sorted(kept)
    assert cli.main(args + ["--force"]) == 0 and not os.path.exists(out + ".partial")
    assert len(_read(out)) == len(LINES)


def _export(model_dir, tmp_path, *extra, options=None, weights=None):
    from pretrain.cli import export_main

    return export_main([model_dir, "--options-file", str(options or tmp_path / "options.json"),
                        "--weight-file", str(weights or tmp_path / "w.hdf5"), *extra])


def test_export_refuses_existing_outputs_and_its_inputs(tmp_path, model_dir, capsys):
    (tmp_path / "options.json").write_text("mine", encoding="utf-8")
    assert _export(model_dir, tmp_path) == 2
    err = capsys.readouterr().err
    assert "--options-file" in err and "already exists; pass --force" in err
    assert (tmp_path / "options.json").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "w.hdf5").exists()  # refused before anything was written
    config = os.path.join(model_dir, "elmo_config.json")
    before = open(config, "rb").read()
    assert _export(model_dir, tmp_path, "--force", options=config) == 2
    assert "is the input file" in capsys.readouterr().err
    assert open(config, "rb").read() == before
    same = tmp_path / "both"
    assert _export(model_dir, tmp_path, options=same, weights=same) == 2
    assert "same path as --options-file" in capsys.readouterr().err
    (tmp_path / "vocab.txt").write_text("mine", encoding="utf-8")
    assert _export(model_dir, tmp_path, "--force", "--vocab", str(tmp_path / "vocab.txt")) == 2
    assert "no vocab.txt to export" in capsys.readouterr().err
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == "mine"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"w.hdf5.tmp.{dead}").write_bytes(b"left by a killed export")
    assert _export(model_dir, tmp_path, "--force") == 0
    assert not (tmp_path / f"w.hdf5.tmp.{dead}").exists()
    assert _export(model_dir, tmp_path, options=tmp_path / "new" / "o.json",  # folders are created
                   weights=tmp_path / "new" / "w.hdf5") == 0
    shutil.rmtree(tmp_path / "new")
    assert json.loads((tmp_path / "options.json").read_text(encoding="utf-8"))["lstm"]["dim"] == 12
    assert sorted(os.listdir(tmp_path)) == sorted(["options.json", "w.hdf5", "vocab.txt", "model"])


# -- point 3: resume checks ---------------------------------------------------------------------
@pytest.fixture
def interrupted(tmp_path, model_dir, src, monkeypatch, capsys):
    """An OUTPUT.partial of an --all run stopped after its first window of 32 lines."""
    out = str(tmp_path / "out.hdf5")
    undo = _interrupt_after_first_window(monkeypatch)
    assert cli.main([src, out, "--model", model_dir, "--quiet", "--batch-size", "2", "--all"]) == 130
    undo()
    capsys.readouterr()
    with h5py.File(out + ".partial", "r") as f:
        assert len([k for k in f if f[k].attrs.get(COMPLETE_ATTR)]) == 32
    return out


def _clean(tmp_path, model_dir, src, *extra):
    out = str(tmp_path / "clean.hdf5")
    assert cli.main([src, out, "--model", model_dir, "--quiet", "--batch-size", "2", *extra]) == 0
    data = _read(out)
    os.remove(out)
    return data


def test_resume_with_another_layout_is_refused(interrupted, src, model_dir, capsys):
    args = [src, interrupted, "--model", model_dir, "--quiet", "--batch-size", "2", "--resume"]
    assert cli.main(args + ["--top"]) == 2
    _one_error_line(capsys, "cannot resume", "output layout", "'all' there, 'top' now")
    assert cli.main(args + ["--dtype", "bfloat16"]) == 2
    _one_error_line(capsys, "cannot resume", "dtype", "'float32' there, 'bfloat16' now")
    assert cli.main(args) == 0  # the matching resume still works afterwards
    assert len(_read(interrupted)) == len(LINES)


def test_resume_with_another_input_or_model_is_refused(tmp_path, interrupted, src, model_dir,
                                                       tiny_config, capsys):
    other = tmp_path / "other.txt"
    assert LINES[-1] == "w0 w1 w2"
    other.write_text("\n".join(LINES[:-1] + ["w0 w1 w3"]) + "\n", encoding="utf-8")  # same size
    base = ["--quiet", "--batch-size", "2", "--resume"]
    assert cli.main([str(other), interrupted, "--model", model_dir, *base]) == 2
    _one_error_line(capsys, "cannot resume", "the input's content differs")
    torch.manual_seed(123)
    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "model2")
    assert cli.main([src, interrupted, "--model", str(tmp_path / "model2"), *base]) == 2
    _one_error_line(capsys, "cannot resume", "the model (config or weights) differs")


def test_model_fingerprint_sees_one_changed_weight(tiny_config):
    from elmo.dump import model_fingerprint

    model = ElmoBiLM(tiny_config)
    copy = ElmoBiLM(tiny_config)
    copy.load_state_dict(model.state_dict())
    assert model_fingerprint(copy) == model_fingerprint(model)
    weight = copy.bilm.backward_layers[1].state_weight
    assert weight.numel() > 1
    with torch.no_grad():
        weight.view(-1)[-1] += 1e-6  # one element, wherever the sample falls
    assert model_fingerprint(copy) != model_fingerprint(model)
    changed = model_fingerprint(copy)
    assert model_fingerprint(copy.to(torch.bfloat16)) != changed  # .to() converts in place


def test_unfinished_dataset_is_written_again_and_lengths_are_checked(tmp_path, interrupted, src,
                                                                     model_dir, capsys):
    clean = _clean(tmp_path, model_dir, src, "--all")
    # Ctrl-C between creating a dataset and writing its data: zeros, never marked complete.
    with h5py.File(interrupted + ".partial", "a") as f:
        assert "40" not in f
        f.create_dataset("40", shape=clean["40"].shape, dtype="float32")
        assert "0" in f and f["0"].attrs[COMPLETE_ATTR]
        del f["0"].attrs[COMPLETE_ATTR]
    args = [src, interrupted, "--model", model_dir, "--quiet", "--batch-size", "2", "--resume"]
    saved = interrupted + ".saved"
    shutil.copyfile(interrupted + ".partial", saved)
    assert cli.main(args) == 0
    resumed = _read(interrupted)
    assert sorted(resumed) == sorted(clean)
    for k in clean:
        np.testing.assert_allclose(resumed[k], clean[k], rtol=0, atol=1e-6)
    assert np.abs(resumed["40"]).max() > 0 and np.abs(resumed["0"]).max() > 0
    # A dataset marked complete whose length is not its line's token count: refused.
    os.remove(interrupted)
    shutil.copyfile(saved, interrupted + ".partial")
    with h5py.File(interrupted + ".partial", "a") as f:
        del f["1"]
        ds = f.create_dataset("1", data=np.zeros((3, 5, 12), np.float32))
        ds.attrs[COMPLETE_ATTR] = True
    assert cli.main(args) == 2
    _one_error_line(capsys, "dataset '1' has shape (3, 5, 12)", "line 2 of the input needs (3, 2, 12)")


def test_resume_reports_the_lines_already_done_as_progress(interrupted, src, model_dir):
    counts = []
    embedder = Embedder.from_pretrained(model_dir, device="cpu", batch_size=2)
    assert embedder.embed_file(src, interrupted, resume=True, force=False,
                               progress=counts.append) == len(LINES)
    assert counts[0] == 32 and sum(counts) == len(LINES)


def test_partial_without_fingerprint_is_refused(interrupted, src, model_dir, capsys):
    with h5py.File(interrupted + ".partial", "a") as f:
        del f.attrs[FINGERPRINT_ATTR]
    assert cli.main([src, interrupted, "--model", model_dir, "--quiet", "--resume"]) == 2
    _one_error_line(capsys, "cannot resume", "no fingerprint", "--force")


# -- point 5: options that do not describe the weight file -----------------------------------
@pytest.mark.parametrize("field,value,leftover", [
    (("char_cnn", "n_highway"), 1, "CNN_high_1/W_carry"),
    (("lstm", "n_layers"), 1, "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B"),
])
def test_weights_left_over_by_the_options_are_refused(tmp_path, tiny_config, field, value, leftover):
    options, weights = tmp_path / "options.json", tmp_path / "weights.hdf5"
    save_original(ElmoBiLM(tiny_config), options, weights)
    load_original(options, weights)  # the matching pair loads
    data = json.loads(options.read_text(encoding="utf-8"))
    data[field[0]][field[1]] = value
    options.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="datasets that .* does not use: .*" + leftover):
        load_original(options, weights)


def test_our_format_with_a_config_that_does_not_fit_its_weights(tmp_path, model_dir, src, capsys):
    config = os.path.join(model_dir, "elmo_config.json")
    data = json.loads(open(config, encoding="utf-8").read())
    data["char_cnn"]["n_highway"] = 1
    with open(config, "w", encoding="utf-8") as f:
        json.dump(data, f)
    assert cli.main([src, str(tmp_path / "o.h5"), "--model", model_dir, "--quiet"]) == 2
    _one_error_line(capsys, "its weights do not fit its config", "char_cnn.highway.layers.1.weight",
                    "the one saved with these weights")


def test_max_characters_per_token_other_than_50(tmp_path, tiny_config, capsys):
    from elmo.chars import batch_to_ids

    tiny_config.char_cnn.max_characters_per_token = 60
    model = ElmoBiLM(tiny_config).eval()
    save_original(model, tmp_path / "options.json", tmp_path / "weights.hdf5")
    loaded = load_original(tmp_path / "options.json", tmp_path / "weights.hdf5")
    assert loaded.config.char_cnn.max_characters_per_token == 60
    long_word = "x" * 70  # truncated to 58 bytes + begin/end of word: needs all 60 positions
    sentence = ["a", long_word, "b"]
    got = Embedder(loaded, device="cpu").embed_sentence(sentence)
    with torch.no_grad():
        out = model(batch_to_ids([sentence], max_characters_per_token=60))
    want = torch.stack([layer[0] for layer in out.layers]).numpy()  # boundaries removed: (L+1, 3, 12)
    assert want.shape == (3, 3, 12)
    cut = Embedder(loaded, device="cpu").embed_sentence(["a", "x" * 48, "b"])  # 50-wide truncation
    assert np.abs(cut - got).max() > 1e-4  # the 10 extra characters are seen
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    (tmp_path / "in.txt").write_text(" ".join(sentence) + "\n", encoding="utf-8")
    assert cli.main([str(tmp_path / "in.txt"), str(tmp_path / "o.hdf5"), "--quiet",
                     "--options-file", str(tmp_path / "options.json"),
                     "--weight-file", str(tmp_path / "weights.hdf5")]) == 0
    np.testing.assert_allclose(_read(tmp_path / "o.hdf5")["0"], got, rtol=0, atol=1e-6)


# -- point 6: non-finite weights ----------------------------------------------------------------
def test_a_model_with_nan_weights_is_refused(tmp_path, tiny_config, src, capsys):
    model = ElmoBiLM(tiny_config)
    with torch.no_grad():
        model.bilm.forward_layers[0].state_weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    out = tmp_path / "out.hdf5"
    assert cli.main([src, str(out), "--model", str(tmp_path / "nan"), "--quiet"]) == 2
    _one_error_line(capsys, "non-finite weights", "state_weight", "earlier checkpoint")
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


# -- point 7: bad input gets one line and exit code 2 -------------------------------------------
def test_bad_paths_and_options_get_one_line(tmp_path, model_dir, src, capsys):
    def run(*args):
        return cli.main([*args, "--quiet"])

    assert run(src, str(tmp_path / "no" / "such" / "out.hdf5"), "--model", model_dir) == 2
    _one_error_line(capsys, "folder", "does not exist", "mkdir -p")
    os.mkdir(tmp_path / "adir")
    assert run(src, str(tmp_path / "adir"), "--model", model_dir, "--force") == 2
    _one_error_line(capsys, "is a directory", "give a file path")
    out = str(tmp_path / "o.hdf5")
    assert run(src, out, "--model", model_dir, "--device", "gpu") == 2
    _one_error_line(capsys, "--device 'gpu' is not a device name", "cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        assert run(src, out, "--model", model_dir, "--device", "cuda") == 2
        _one_error_line(capsys, "--device cuda: CUDA is not available here", "--device cpu")
    assert run(src, out, "--model", model_dir, "--threads", "-1") == 2
    _one_error_line(capsys, "--threads must be >= 1, got -1")
    assert run(src, out, "--model", model_dir, "--threads", "0") == 2
    _one_error_line(capsys, "--threads must be >= 1, got 0")
    assert run(src, out, "--model", model_dir, "--max-tokens-per-batch", "0") == 2
    _one_error_line(capsys, "--max-tokens-per-batch must be >= 1")
    assert run(src, out, "--model", model_dir, "--vocab", str(tmp_path / "words.txt")) == 2
    _one_error_line(capsys, "--vocab file not found", "words.txt")
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_truncated_weight_files_get_one_line(tmp_path, model_dir, tiny_config, src, capsys):
    out = str(tmp_path / "o.hdf5")
    weights = _weights(model_dir)
    data = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    assert cli.main([src, out, "--model", model_dir, "--quiet"]) == 2
    _one_error_line(capsys, "cannot load the model", model_dir)
    save_original(ElmoBiLM(tiny_config), tmp_path / "options.json", tmp_path / "w.hdf5")
    data = (tmp_path / "w.hdf5").read_bytes()
    (tmp_path / "w.hdf5").write_bytes(data[: len(data) // 2])
    assert cli.main([src, out, "--options-file", str(tmp_path / "options.json"),
                     "--weight-file", str(tmp_path / "w.hdf5"), "--quiet"]) == 2
    _one_error_line(capsys, "cannot load the model", "w.hdf5", "truncated")
    assert not os.path.exists(out)


def test_disk_full_is_one_line_and_keeps_the_partial(tmp_path, model_dir, src, monkeypatch, capsys):
    out = str(tmp_path / "o.hdf5")
    real, calls = eio.free_bytes, {"n": 0}

    def shrinking(path):  # room for the file's creation and one window, then nothing
        calls["n"] += 1
        return real(path) if calls["n"] <= 2 else 4096

    monkeypatch.setattr(eio, "free_bytes", shrinking)
    assert cli.main([src, out, "--model", model_dir, "--quiet", "--batch-size", "2"]) == 2
    line = _one_error_line(capsys, "no space left on the device", "4.0 KiB free in", "--resume")
    assert out + ".partial" in line
    assert not os.path.exists(out)
    monkeypatch.setattr(eio, "free_bytes", real)
    assert cli.main([src, out, "--model", model_dir, "--quiet", "--batch-size", "2", "--resume"]) == 0
    assert len(_read(out)) == len(LINES)


def test_an_unreadable_input_or_unwritable_file_is_one_line(tmp_path, model_dir, src, monkeypatch,
                                                            capsys):
    import elmo.dump as dump

    def denied(path, token_counts=False):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(dump, "scan_input", denied)
    assert cli.main([src, str(tmp_path / "o.h5"), "--model", model_dir, "--quiet"]) == 2
    line = _one_error_line(capsys, f"{src}: Permission denied (while embedding")
    assert line.count(src) == 2  # the file, then the command's input: no repeated errno text


def _tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_small_file_system(tmp_path, model_dir):
    """A 3 MiB tmpfs that the output does not fit: exit 2 and one line, no crash, no traceback."""
    small = tmp_path / "small"
    if not _tmpfs(small, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        big = tmp_path / "big.txt"
        big.write_text("\n".join(" ".join(["tok"] * 40) for _ in range(1000)) + "\n", encoding="utf-8")
        out = small / "o.hdf5"
        proc = subprocess.run([sys.executable, "-m", "elmo.cli", str(big), str(out), "--model",
                               model_dir, "--quiet", "--threads", "1"],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        errors = [line for line in proc.stderr.splitlines() if line.startswith("elmo-embed:")]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(errors) == 1 and "no space left on the device" in errors[0], proc.stderr[-2000:]
        assert str(out) in errors[0] and "free in" in errors[0]
        assert "Traceback" not in proc.stderr and not out.exists()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_export_disk_full_is_one_line_and_leaves_no_temporary_file(tmp_path, model_dir, capsys,
                                                                    monkeypatch):
    import elmo.weights as weights

    def full(path, arrays):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "_write_hdf5", full)
    assert _export(model_dir, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on the device" in err and "free in" in err
    assert str(tmp_path / "w.hdf5") in err
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no output, no PATH.tmp.PID


def test_export_disk_full_on_a_real_small_file_system(tmp_path, capsys):
    small = tmp_path / "small"
    if not _tmpfs(small, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig

        big = ElmoConfig(CharCNNConfig(embedding_dim=4, filters=[[1, 8], [2, 8]], n_highway=1),
                         BiLMConfig(dim=256, projection_dim=64, n_layers=2))  # ~2 MB of weights
        ElmoBiLM(big).save_pretrained(tmp_path / "m")
        assert _export(str(tmp_path / "m"), small) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no space left on the device" in err, err
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# -- point 8: text decoding ---------------------------------------------------------------------
def test_non_utf8_names_file_and_line_before_any_work(tmp_path, model_dir, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine line\nstill fine\ncaf\xe9 au lait\n")
    out = str(tmp_path / "o.hdf5")
    assert cli.main([str(path), out, "--model", model_dir, "--quiet"]) == 2
    _one_error_line(capsys, f"{path}, line 3: not valid UTF-8", "byte 0xe9 at column 4")
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_a_lone_carriage_return_does_not_split_a_line(tmp_path, model_dir):
    path = tmp_path / "cr.txt"
    path.write_bytes(b"a b\rc d\r\nnext line\n")
    out = str(tmp_path / "o.hdf5")
    assert cli.main([str(path), out, "--model", model_dir, "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(k for k in f if k != "sentence_to_index") == ["0", "1"]
        assert f["0"].shape == (3, 4, 12) and f["1"].shape == (3, 2, 12)
        assert json.loads(f["sentence_to_index"][0]) == {"a b\rc d": "0", "next line": "1"}


def test_a_byte_order_mark_starting_the_input_is_not_part_of_line_0(tmp_path, model_dir, monkeypatch):
    """An input (or --vocab) file that starts with a UTF-8 byte-order mark gives exactly the
    vectors and sentence keys of the same file without it; a U+FEFF inside a line, or starting a
    later line, is text and stays in its token."""
    text = "  w1 w2 w3\nzero\ufeffwidth w4\n\ufeffw5 w6\n\nw7\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_bytes(text.encode())
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())
    words = "w1\nzero\ufeffwidth\n\ufeffw5\n"
    (tmp_path / "plain.vocab").write_bytes(words.encode())
    (tmp_path / "marked.vocab").write_bytes(b"\xef\xbb\xbf" + words.encode())
    cached = []
    real = Embedder.cache_vocabulary
    monkeypatch.setattr(Embedder, "cache_vocabulary",
                        lambda self, words: cached.append(list(words)) or real(self, words))
    outs = {}
    for name, path in (("plain", plain), ("marked", marked)):
        out = str(tmp_path / f"{name}.hdf5")
        assert cli.main([str(path), out, "--model", model_dir, "--quiet", "--vocab",
                         str(tmp_path / f"{name}.vocab")]) == 0
        outs[name] = out
    a, b = _read(outs["plain"]), _read(outs["marked"])
    assert sorted(b) == sorted(a) == ["0", "1", "2", "3", "4"]
    for key in a:
        np.testing.assert_array_equal(b[key], a[key])
    assert b["0"].shape == (3, 3, 12) and b["1"].shape == (3, 2, 12) and b["3"].shape == (3, 0, 12)
    with h5py.File(outs["plain"], "r") as f, h5py.File(outs["marked"], "r") as g:
        index = json.loads(g["sentence_to_index"][0])
        assert index == json.loads(f["sentence_to_index"][0])
    assert index == {"w1 w2 w3": "0", "zero\ufeffwidth w4": "1", "\ufeffw5 w6": "2", "": "3", "w7": "4"}
    assert cached[1] == cached[0] == ["w1", "zero\ufeffwidth", "\ufeffw5"]
    # a run made from the marked file resumes as complete (its line lengths are checked)
    assert cli.main([str(marked), outs["marked"], "--model", model_dir, "--quiet", "--resume"]) == 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_a_clean_run(tmp_path, model_dir):
    """A real process killed with SIGKILL 8 times (mid-window, mid-write, at start-up), resumed
    each time: the final file equals an uninterrupted run's, byte for byte in every dataset."""
    import random
    import signal
    import time

    rng = random.Random(0)
    src = tmp_path / "in.txt"
    src.write_text("".join(" ".join(f"w{rng.randint(0, 500)}" for _ in range(rng.randint(0, 30)))
                           + "\n" for _ in range(3000)), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(out, *extra):
        return subprocess.Popen([sys.executable, "-m", "elmo.cli", str(src), str(out), "--model",
                                 model_dir, "--quiet", "--threads", "1", "--batch-size", "16", *extra],
                                stderr=subprocess.PIPE, text=True, env=env)

    t0 = time.perf_counter()
    clean = start(tmp_path / "clean.h5")
    assert clean.wait(timeout=600) == 0, clean.stderr.read()
    duration = time.perf_counter() - t0
    out, kills = tmp_path / "r.h5", 0
    while True:
        proc = start(out, "--resume")
        if kills < 8:
            time.sleep(rng.uniform(0.3, 1.0) * duration)
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=600)
        err = proc.stderr.read()
        if rc == -signal.SIGKILL:
            kills += 1  # OUTPUT appears only whole: killed after the rename, the next resume is a no-op
            assert not (out.exists() and os.path.exists(f"{out}.partial"))
            continue
        assert rc == 0, err
        break
    with h5py.File(tmp_path / "clean.h5", "r") as a, h5py.File(out, "r") as b:
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.array_equal(a[key][...], b[key][...]), key
