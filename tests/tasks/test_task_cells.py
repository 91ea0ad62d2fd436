"""The task adapters with an ELMo whose biLM uses another recurrent cell: cached layers, fine-tuning
of the cell's weights, and the reloaded model folder scoring what training scored."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import make_tiny_config
from elmo import ElmoBiLM
from tasks.checkpoint import load_model
from tasks.cli import main

SMALL = ["--set", "hidden_dim=8", "--set", "word_dim=8", "--set", "mlp_dim=8", "--set", "num_lstm_layers=1",
         "--set", "num_threads=1", "--batch-size", "4", "--quiet"]


def ner_file(path, n):
    rows = [("Ann", "B-PER"), ("went", "O"), ("to", "O"), ("Oslo", "B-LOC"), (".", "O")]
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n" + "".join(
            "".join(f"{w} X X {t}\n" for w, t in rows) + "\n" for _ in range(n)))
    return str(path)


@pytest.mark.parametrize("cell", ["qrnn", "gru"])
def test_ner_with_a_cell_elmo(cell, tmp_path, capsys):
    torch.manual_seed(0)
    elmo_dir = str(tmp_path / "elmo")
    ElmoBiLM(make_tiny_config(cell=cell)).save_pretrained(elmo_dir)
    train, dev = ner_file(tmp_path / "train.txt", 8), ner_file(tmp_path / "dev.txt", 4)
    out = str(tmp_path / "model")
    assert main(["train", "ner", "--train", train, "--dev", dev, "--out", out, "--model", elmo_dir,
                 "--epochs", "2", "--fine-tune", "--set", "lr=0.01", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    original, tuned = ElmoBiLM.from_pretrained(elmo_dir), ElmoBiLM.from_pretrained(os.path.join(out, "elmo"))
    assert tuned.config.bilm.cell == cell
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert any(k.startswith("bilm.forward_layers.") for k in changed)  # the cell's weights were tuned
    cfg, task, words, labels, model = load_model(out)
    assert type(model.encoder.bilm.bilm.forward_layers[0]) is type(tuned.bilm.forward_layers[0])
    assert main(["evaluate", out, "--data", dev, "--json", "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1"] == pytest.approx(summary["dev"], abs=1e-9)
