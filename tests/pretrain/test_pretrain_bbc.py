"""Slow: the tiny preset on the real BBC News corpus beats the unigram baseline clearly."""

import json
import os

import pytest

from elmo import ElmoBiLM
from pretrain.cli import main


@pytest.mark.slow
def test_tiny_preset_on_bbc_news_beats_the_unigram_baseline(data_dir, tmp_path):
    corpus = os.path.join(data_dir, "bbcnews")
    if not os.path.isdir(corpus):
        pytest.skip(f"{corpus} not found; run: python scripts/get_data.py")
    out = tmp_path / "lm"
    assert main(["--train", corpus, "--preset", "tiny", "--tokenizer", "punct", "--out", str(out),
                 "--max-tokens", "256000", "--no-progress", "--log-level", "WARNING"]) == 0
    held = json.loads((out / "results.json").read_text())["heldout"]
    assert held["tokens_per_direction"] > 15000
    unigram = held["unigram_perplexity_forward_targets"]
    assert 700 < unigram < 1200
    assert held["forward_perplexity"] < 0.7 * unigram and held["backward_perplexity"] < 0.7 * unigram
    assert ElmoBiLM.from_pretrained(out).config.bilm.projection_dim == 64
