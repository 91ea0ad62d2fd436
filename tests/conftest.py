"""Shared fixtures: tiny model configs, the original-ELMo reference fixtures, the data folder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported

import pytest
import torch

from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.environ.get(
    "ELMO_REFERENCE_DIR",
    os.path.join(ROOT, "..", "shared", "reference", "elmo-tf-fixtures"))
DATA_DIR = os.environ.get("ELMO_DATA_DIR", os.path.join(ROOT, ".data"))


def make_tiny_config(**bilm) -> ElmoConfig:
    """A few-thousand-parameter model: fast enough for any unit test."""
    return ElmoConfig(
        CharCNNConfig(embedding_dim=4, filters=[[1, 4], [2, 8], [3, 8]], n_highway=2),
        BiLMConfig(**{"dim": 12, "projection_dim": 6, "n_layers": 2, "cell_clip": 3.0,
                      "proj_clip": 3.0, **bilm}))


@pytest.fixture
def tiny_config() -> ElmoConfig:
    return make_tiny_config()


@pytest.fixture
def model_dir(tmp_path, tiny_config) -> str:
    """A tiny model saved with ``save_pretrained`` (what ``elmo-embed --model DIR`` reads)."""
    from elmo import ElmoBiLM

    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


@pytest.fixture
def reference_dir() -> str:
    """The original TF ELMo's outputs (shared/reference); skipped in a user's clone without them."""
    if not os.path.isfile(os.path.join(REFERENCE_DIR, "lm_weights.hdf5")):
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (set ELMO_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture
def data_dir() -> str:
    """Real data sets fetched by scripts/get_data.py; skipped when they are not there."""
    if not os.path.isdir(DATA_DIR):
        pytest.skip(f"data sets not found at {DATA_DIR}; run: python scripts/get_data.py")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
