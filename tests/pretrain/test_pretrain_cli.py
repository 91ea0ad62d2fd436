"""elmo-pretrain and elmo-export end to end on a toy corpus: run directory, export round trip,
continuing from a trained model, and clear errors for bad input."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids, load_original
from pretrain.cli import export_main, main
from pretrain.config import PretrainConfig
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences, write_lines  # noqa: F401
from elmo.serialization import find_weights

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write_lines(str(root / "train.txt"), toy_sentences(300))
    config = tiny_pretrain_config(data={"heldout_fraction": 0.1}, train={"keep_checkpoints": 2})
    config.save(root / "config.json")
    out = root / "run"
    torch.set_num_threads(1)
    assert main(["--train", corpus, "--out", str(out), "--config", str(root / "config.json"),
                 "--max-steps", "6", "--checkpoint-every", "2", "--set", "train.log_every=1",
                 "--no-progress", "--log-level", "WARNING"]) == 0
    return root, out, corpus


def test_the_run_directory(trained):
    root, out, _ = trained
    for name in ("pretrain_config.json", "vocab.txt", "metrics.jsonl", "results.json",
                 "elmo_config.json", "lm_softmax.pt", "curves.png"):
        assert (out / name).is_file(), name
    assert find_weights(out) is not None  # elmo_weights.safetensors (or .pt without safetensors)
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000000004.pt", "step-000000006.pt"]
    config = PretrainConfig.load(out / "pretrain_config.json")
    assert config.train.max_steps == 6 and config.train.max_tokens is None
    results = json.loads((out / "results.json").read_text())
    held = results["heldout"]
    assert results["completed"] and results["step"] == 6 and held["tokens_per_direction"] > 0
    assert 1.0 < held["forward_perplexity"] < 1000 and held["unigram_perplexity_forward_targets"] > 1
    vocab = (out / "vocab.txt").read_text().split("\n")
    assert vocab[:3] == ["<S>", "</S>", "<UNK>"] and "cat" in vocab
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("heldout_forward_ppl" in r for r in records)
    # The directory is a model directory of elmo; its weights are the trained LM's.
    model = ElmoBiLM.from_pretrained(out)
    state = torch.load(out / "checkpoints" / "step-000000006.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[f"bilm.{k}"]), k


def test_elmo_embed_reads_the_run_directory(trained, tmp_path):
    from elmo.cli import main as embed_main

    root, out, _ = trained
    text = write_lines(str(tmp_path / "s.txt"), ["the cat sees it .", "a dog likes some bread ."])
    assert embed_main([text, str(tmp_path / "e.hdf5"), "--model", str(out), "--all", "--quiet"]) == 0
    with h5py.File(tmp_path / "e.hdf5", "r") as f:
        assert f["0"].shape == (3, 5, 16) and f["1"].shape == (3, 6, 16)


def test_export_to_the_original_format_gives_the_same_activations(trained, tmp_path):
    root, out, _ = trained
    o, w, v = tmp_path / "options.json", tmp_path / "weights.hdf5", tmp_path / "vocab.txt"
    assert export_main([str(out), "--options-file", str(o), "--weight-file", str(w), "--vocab", str(v)]) == 0
    assert v.read_text() == (out / "vocab.txt").read_text()
    assert json.loads(o.read_text())["lstm"]["projection_dim"] == 8
    ours, original = ElmoBiLM.from_pretrained(out).eval(), load_original(str(o), str(w)).eval()
    ids = batch_to_ids([["the", "cat", "sees", "it", "."], ["unseen", "words"]])
    with torch.no_grad():
        for a, b in zip(ours(ids).layers, original(ids).layers):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=0)


def test_continue_from_a_trained_model_on_new_text(trained, tmp_path):
    root, out, _ = trained
    new = write_lines(str(tmp_path / "domain.txt"), ["the robot sees the ball ."] * 30)
    run = tmp_path / "adapted"
    assert main(["--train", new, "--out", str(run), "--init", str(out), "--max-steps", "1",
                 "--set", "optim.lr=0.0", "--set", "data.heldout_fraction=0.0",
                 "--no-progress", "--log-level", "WARNING"]) == 0
    before, after = ElmoBiLM.from_pretrained(out), ElmoBiLM.from_pretrained(run)
    assert before.config == after.config  # the sizes come from the initial model
    for k, v in before.state_dict().items():
        assert torch.equal(v, after.state_dict()[k]), k
    old_vocab = (out / "vocab.txt").read_text().split()
    new_vocab = (run / "vocab.txt").read_text().split()
    assert "robot" in new_vocab and "robot" not in old_vocab
    old_soft = torch.load(out / "lm_softmax.pt", weights_only=True)["state"]
    new_soft = torch.load(run / "lm_softmax.pt", weights_only=True)["state"]
    i, j = new_vocab.index("ball"), old_vocab.index("ball")
    assert torch.equal(new_soft["weight"][i], old_soft["weight"][j])  # shared words keep their row
    # ... and from a checkpoint file of ours.
    ckpt = out / "checkpoints" / "step-000000006.pt"
    assert main(["--train", new, "--out", str(tmp_path / "from_ckpt"), "--init", str(ckpt),
                 "--max-steps", "1", "--set", "optim.lr=0.0", "--set", "data.heldout_fraction=0.0",
                 "--no-progress", "--log-level", "WARNING"]) == 0
    again = ElmoBiLM.from_pretrained(tmp_path / "from_ckpt")
    for k, v in before.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # ... and from the original format (options.json + weights.hdf5 in a folder).
    original = tmp_path / "original"
    original.mkdir()
    assert export_main([str(out), "--options-file", str(original / "options.json"),
                        "--weight-file", str(original / "weights.hdf5")]) == 0
    assert main(["--train", new, "--out", str(tmp_path / "from_original"), "--init", str(original),
                 "--max-steps", "1", "--set", "optim.lr=0.0", "--set", "data.heldout_fraction=0.0",
                 "--no-progress", "--log-level", "WARNING"]) == 0
    third = ElmoBiLM.from_pretrained(tmp_path / "from_original")
    for k, v in before.state_dict().items():
        torch.testing.assert_close(third.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def run_cli(args, capsys):
    rc = main(args + ["--max-steps", "1", "--no-progress", "--log-level", "ERROR",
                      "--set", "data.batch_size=2", "--set", "data.window=4",
                      "--set", "model.bilm.dim=8", "--set", "model.bilm.projection_dim=4",
                      "--set", "model.char_cnn.filters=[[1,4]]"])
    return rc, capsys.readouterr().err


def test_bad_corpus_input_gets_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "out")
    rc, err = run_cli(["--train", str(tmp_path / "missing.txt"), "--out", out], capsys)
    assert rc == 2 and "missing.txt: no such file, folder or glob match" in err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 64)
    rc, err = run_cli(["--train", str(junk), "--out", out], capsys)
    assert rc == 2 and "junk.bin: looks like a binary file" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, err = run_cli(["--train", str(empty), "--out", out], capsys)
    assert rc == 2 and "every file is empty" in err
    blank = write_lines(str(tmp_path / "blank.txt"), ["", "  ", ""])
    rc, err = run_cli(["--train", blank, "--out", out], capsys)
    assert rc == 2 and "no training text" in err
    rc, err = run_cli(["--train", "nosuchuser/nosuchcorpus", "--out", out], capsys)  # offline hub
    assert rc == 2 and "nosuchuser/nosuchcorpus: no such file or folder, and loading it as a hub" in err
    rc, err = run_cli(["--train", blank, "--out", out, "--set", "optim.lrate=1"], capsys)
    assert rc == 2 and "no field 'lrate'" in err


def test_awkward_but_valid_input_trains(tmp_path, capsys):
    no_newline = write_lines(str(tmp_path / "a.txt"), ["one line without newline"], newline_at_end=False)
    huge = write_lines(str(tmp_path / "b.txt"), [" ".join(f"wd{i % 50:03d}" for i in range(200_000))])
    assert os.path.getsize(huge) > 1_000_000
    for batch_mode in ("window", "sentence"):
        rc, err = run_cli(["--train", no_newline, huge, "--out", str(tmp_path / batch_mode),
                           "--batch-mode", batch_mode, "--set", "data.max_sentence_tokens=50"], capsys)
        assert rc == 0, err
        assert ElmoBiLM.from_pretrained(tmp_path / batch_mode) is not None


def test_budget_flags(tmp_path, capsys):
    corpus = write_lines(str(tmp_path / "t.txt"), toy_sentences(30))
    with pytest.raises(SystemExit):
        main(["--train", corpus, "--out", str(tmp_path / "x"), "--max-steps", "1", "--epochs", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["--train", corpus, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "exactly one training budget" in capsys.readouterr().err
    config = tiny_pretrain_config(data={"batch_size": 2, "window": 5})
    config.save(tmp_path / "c.json")
    assert main(["--train", corpus, "--out", str(tmp_path / "e"), "--config", str(tmp_path / "c.json"),
                 "--epochs", "1", "--no-progress", "--log-level", "WARNING"]) == 0
    n_tokens = sum(len(s.split()) + 2 for s in toy_sentences(30))
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["step"] == -(-n_tokens // 10)  # one epoch, computed from the corpus


@pytest.mark.parametrize("kind", ["full", "adaptive"])
def test_other_softmax_kinds_train_and_save(kind, tmp_path, capsys):
    corpus = write_lines(str(tmp_path / "t.txt"), toy_sentences(60))
    rc, err = run_cli(["--train", corpus, "--out", str(tmp_path / kind), "--softmax", kind,
                       "--set", "softmax.adaptive_cutoffs=[5]", "--set", "data.heldout_fraction=0.2"],
                      capsys)
    assert rc == 0, err
    saved = torch.load(tmp_path / kind / "lm_softmax.pt", weights_only=True)
    assert saved["kind"] == kind
    held = json.loads((tmp_path / kind / "results.json").read_text())["heldout"]
    assert held["forward_perplexity"] > 1.0
