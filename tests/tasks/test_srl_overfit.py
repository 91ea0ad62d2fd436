"""The SRL tagger over-fits the OntoNotes sample (80 frames) to span F1 >= 95 on its training data."""

import json
import os

import pytest
import torch

from elmo import ElmoBiLM
from tasks.cli import main


def overfit(tmp_path, capsys, data_dir, extra):
    from conftest import make_tiny_config

    elmo = str(tmp_path / "elmo")
    ElmoBiLM(make_tiny_config()).save_pretrained(elmo)
    path = os.path.join(data_dir, "srl", "nt_6401.gold_conll")
    out = str(tmp_path / "srl")
    assert main(["train", "srl", "--train", path, "--dev", path, "--out", out, "--model", elmo,
                 "--set", "min_word_count=1", "--set", "patience=1000", "--quiet", *extra]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--data", path, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_srl_overfits_ontonotes_sample(tmp_path, capsys, data_dir):
    torch.manual_seed(0)
    scores = overfit(tmp_path, capsys, data_dir, [
        "--epochs", "20", "--batch-size", "8", "--set", "num_threads=1", "--set", "hidden_dim=64", "--set", "num_lstm_layers=2",
        "--set", "dropout=0", "--set", "elmo_dropout=0", "--set", "lr=0.01"])
    # arguments of the 80 frames, V not counted: '(' entries in the argument columns minus '(V'
    entries = [c for line in open(os.path.join(data_dir, "srl", "nt_6401.gold_conll"))
               if line.strip() and not line.startswith("#") for c in line.split()[11:-1]]
    n_args = sum(c.startswith("(") for c in entries) - sum(c.startswith("(V*") for c in entries)
    assert scores["gold_chunks"] == n_args == 207
    assert scores["f1"] >= 95.0, scores


@pytest.mark.slow
def test_srl_overfits_with_default_sizes(tmp_path, capsys, data_dir):
    """The default SRL head (4 x 300 BiLSTM, dropout 0.1)."""
    torch.manual_seed(0)
    scores = overfit(tmp_path, capsys, data_dir, ["--epochs", "40", "--batch-size", "8", "--set", "num_threads=1"])
    assert scores["f1"] >= 95.0, scores
