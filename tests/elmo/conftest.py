"""Fixtures for the elmo package's tests (the shared ones are in tests/conftest.py)."""

import pytest

from elmo import ElmoBiLM


@pytest.fixture
def model_dir(tmp_path, tiny_config) -> str:
    """A tiny model saved with ``save_pretrained`` (what ``elmo-embed --model DIR`` reads)."""
    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")
