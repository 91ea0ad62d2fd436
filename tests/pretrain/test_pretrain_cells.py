"""Every recurrent cell pretrains through ``elmo-pretrain --cell NAME``: the loss goes down, the
run directory holds a loadable model with that cell, regularizer flags reach the config."""

from __future__ import annotations

import json

import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids
from elmo.config import CELLS
from pretrain.cli import export_main, main
from pretrain_util import toy_sentences, write_lines

# Tiny sizes on top of the tiny preset: a few seconds per cell on two cores.
SHRINK = ["--set", "model.bilm.dim=32", "--set", "model.bilm.projection_dim=16",
          "--set", "model.char_cnn.filters=[[1,8],[2,8],[3,16]]", "--set", "data.batch_size=8",
          "--set", "data.window=10", "--set", "softmax.num_samples=32", "--set", "train.log_every=1",
          "--set", "data.heldout_fraction=0.0", "--set", "train.checkpoint_every=1000"]


def losses(out_dir) -> list:
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_lines(str(tmp_path_factory.mktemp("toy") / "train.txt"), toy_sentences(400))


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_pretrains_with_decreasing_loss(cell, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    kind = ["--recurrent-dropout-kind", "variational", "--recurrent-dropout", "0.1"] \
        if cell in ("gru", "sru") else []
    assert main(["--train", corpus, "--out", str(out), "--preset", "tiny", "--cell", cell,
                 "--max-steps", "24", "--no-progress", "--threads", "1", "--log-level", "WARNING"]
                + kind + SHRINK) == 0
    curve = losses(out)
    assert len(curve) == 24
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.05, curve
    saved = json.loads((out / "pretrain_config.json").read_text())["model"]["bilm"]
    assert saved["cell"] == cell
    assert saved["recurrent_dropout_kind"] == ("variational" if kind else None)
    model = ElmoBiLM.from_pretrained(out).eval()
    assert model.config.bilm.cell == cell
    with torch.no_grad():
        layers = model(batch_to_ids([["the", "cat", "sees", "it", "."]])).layers
    assert len(layers) == 3 and all(torch.isfinite(x).all() for x in layers)
    capsys.readouterr()
    rc = export_main([str(out), "--options-file", str(tmp_path / "options.json"),
                      "--weight-file", str(tmp_path / "weights.hdf5")])
    if cell == "lstm":
        assert rc == 0 and (tmp_path / "weights.hdf5").is_file()
    else:  # the original format holds only the LSTM
        assert rc == 2 and f"cell='{cell}'" in capsys.readouterr().err
        assert not (tmp_path / "weights.hdf5").exists()


def test_cell_flags_are_validated(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--train", corpus, "--out", str(tmp_path / "a"), "--cell", "lsmt", "--max-steps", "1"])
    assert "invalid choice: 'lsmt'" in capsys.readouterr().err
    assert main(["--train", corpus, "--out", str(tmp_path / "b"), "--cell", "elman",
                 "--recurrent-dropout-kind", "semeniuta", "--recurrent-dropout", "0.1",
                 "--max-steps", "1"]) == 2
    assert "semeniuta" in capsys.readouterr().err
    assert main(["--train", corpus, "--out", str(tmp_path / "c"), "--recurrent-dropout", "0.1",
                 "--max-steps", "1"]) == 2
    assert "recurrent_dropout_kind" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_pretrains_the_tiny_preset(cell, corpus, tmp_path):
    """The tiny preset at its own sizes (512/64, char CNN of 384 filters), a few steps."""
    out = tmp_path / "run"
    assert main(["--train", corpus, "--out", str(out), "--preset", "tiny", "--cell", cell,
                 "--max-steps", "12", "--no-progress", "--log-level", "WARNING",
                 "--set", "train.log_every=1", "--set", "data.heldout_fraction=0.0",
                 "--set", "data.batch_size=16"]) == 0
    curve = losses(out)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve
