"""Helpers shared by the pretraining tests: toy corpora, a tiny config, a fixed-batch batcher."""

from __future__ import annotations

import os
import random

import pytest
import torch

from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig
from pretrain.config import PretrainConfig

@pytest.fixture
def single_thread():
    """One torch thread: tiny models on a shared 2-core machine run several times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "he"]
VERBS = ["sees", "likes", "finds", "wants"]
OBJECTS = ["the ball", "a red car", "the small house", "some bread", "it"]


def toy_sentences(n: int, seed: int = 0) -> list[str]:
    """Sentences of a small grammar: learnable by a tiny LM in a few hundred steps."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ." for _ in range(n)]


def write_lines(path: str, lines: list[str], newline_at_end: bool = True) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def tiny_model_config() -> ElmoConfig:
    return ElmoConfig(CharCNNConfig(embedding_dim=4, filters=[[1, 4], [2, 8], [3, 8]], n_highway=1),
                      BiLMConfig(dim=16, projection_dim=8, n_layers=2, cell_clip=3.0, proj_clip=3.0))


def tiny_pretrain_config(**sections) -> PretrainConfig:
    """A seconds-long configuration; ``sections`` update fields, e.g. data={"window": 5}."""
    base = PretrainConfig(model=tiny_model_config()).to_dict()
    base["data"].update({"batch_size": 4, "window": 6, "heldout_fraction": 0.0})
    base["softmax"].update({"num_samples": 8})
    base["train"].update({"max_steps": 4, "progress": False, "threads": None})
    for name, values in sections.items():
        base[name].update(values)
    return PretrainConfig.from_dict(base)


class ListBatcher:
    """Serves a fixed list of batches in order (position = index); for equivalence tests."""

    def __init__(self, batches) -> None:
        self.batches, self.index = list(batches), 0

    def next_batch(self):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]
