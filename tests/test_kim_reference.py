"""scripts/kim_reference.py, the independent plain-PyTorch Kim et al. 2016 model that
docs/pretraining.md compares the ptb-char-small preset with: it trains and is deterministic."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import kim_reference  # noqa: E402


def test_the_reference_model_learns_a_repeated_sentence_deterministically(tmp_path, capsys):
    for name, lines in (("train.txt", 2000), ("valid.txt", 100)):
        (tmp_path / name).write_text("the cat sat on the mat\n" * lines, encoding="utf-8")
    history = kim_reference.main(["--data", str(tmp_path), "--epochs", "3"])
    assert len(history) == 3
    # 6 words (with </S>): uniform guessing is 6; after three epochs of 20 steps it is below 6
    # and falls every epoch.
    assert history[0] > history[1] > history[2] and history[2] < 6.0, history
    assert "2,303,796 parameters" in capsys.readouterr().out  # 525 features, 2 x 300 LSTM, 6 words
    again = kim_reference.main(["--data", str(tmp_path), "--epochs", "1"])
    assert again[0] == pytest.approx(history[0], rel=0, abs=0)


def test_the_reference_refuses_validation_words_outside_training(tmp_path):
    (tmp_path / "train.txt").write_text("a b\n" * 400, encoding="utf-8")
    (tmp_path / "valid.txt").write_text("a c\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="not in train.txt"):
        kim_reference.main(["--data", str(tmp_path), "--epochs", "1"])
