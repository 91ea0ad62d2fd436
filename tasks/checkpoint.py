"""A task model folder: everything needed to evaluate or apply a trained head.

    DIR/task_config.json   the resolved TaskConfig: task, data, elmo, head, train (tasks.config)
    DIR/vocab.json         {"words": [...] or null, "labels": [...]}
    DIR/model.pt           the head's state_dict (without the biLM's weights)
    DIR/elmo/              a copy of the ELMo (elmo_config.json + elmo_weights.safetensors/.pt), fine-tuned or not
    DIR/metrics.jsonl      one line per epoch;  DIR/results.json  final dev/test scores

The ELMo is copied rather than referenced so the folder keeps working when the original moves.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from typing import Optional

import torch
from torch import nn

from elmo import ElmoBiLM
from elmo.io import DiskFullError, atomic_open, write_json_atomic
from tasks.config import TASKS, TaskConfig
from tasks.data import Symbols
from tasks.task import Task

CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME, ELMO_DIR = "task_config.json", "vocab.json", "model.pt", "elmo"
BILM_PREFIX = "encoder.bilm."


@contextlib.contextmanager
def _damaged(path: str):
    """A file of the model folder that cannot be read: one line naming it, not a traceback."""
    try:
        yield
    except (FileNotFoundError, DiskFullError):
        raise
    except Exception as e:  # torch / pickle / zip / JSON errors of a truncated or foreign file
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {detail}); the model folder is "
                         "damaged or incomplete: train it again or restore it from a copy") from None


def get_task(name: str) -> Task:
    """The module (``tasks.ner``, ``tasks.srl`` or ``tasks.classify``) holding a task's head and
    data functions (a ``Task``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return importlib.import_module(f"tasks.{name}")


def head_state(model: nn.Module, include_bilm: bool = False) -> dict:
    """The model's state on the CPU, without the biLM's tensors unless ``include_bilm``."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if include_bilm or not k.startswith(BILM_PREFIX)}


def load_head_state(model: nn.Module, state: dict) -> None:
    """Load a head state; only the biLM's tensors may be missing (they come from DIR/elmo)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(BILM_PREFIX)]
    if missing or result.unexpected_keys:
        raise ValueError(f"the saved head does not fit the model built from its config: missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def save_setup(directory: str, cfg: TaskConfig, words: Optional[Symbols], labels: Symbols,
               bilm: Optional[ElmoBiLM]) -> None:
    """Write the config, the vocabularies and the ELMo copy (before training starts)."""
    os.makedirs(directory, exist_ok=True)
    cfg.save(os.path.join(directory, CONFIG_NAME))
    write_json_atomic(os.path.join(directory, VOCAB_NAME),
                      {"words": words.items if words is not None else None, "labels": labels.items})
    if bilm is not None:
        bilm.save_pretrained(os.path.join(directory, ELMO_DIR))


def save_weights(directory: str, model: nn.Module, cfg: TaskConfig) -> None:
    """The head's weights (atomically); a fine-tuned biLM goes to DIR/elmo again."""
    with atomic_open(os.path.join(directory, WEIGHTS_NAME), "wb") as f:
        torch.save(head_state(model), f)
    if cfg.elmo.use and cfg.elmo.fine_tune:
        model.encoder.bilm.save_pretrained(os.path.join(directory, ELMO_DIR))


def load_model(directory: str, device: str = "cpu"):
    """-> (cfg, task module, words or None, labels, model in eval mode)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not a task model folder ({CONFIG_NAME} is missing); "
                                "create one with: elmo-task train ... --out DIR")
    cfg = TaskConfig.load(path)
    cfg.train.device = device
    task = get_task(cfg.task)
    vocab_path = os.path.join(directory, VOCAB_NAME)
    with _damaged(vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        words = Symbols(vocab["words"][2:], specials=True) if vocab["words"] is not None else None
        labels = Symbols(vocab["labels"], specials=False)
    if cfg.elmo.use:
        with _damaged(os.path.join(directory, ELMO_DIR)):
            bilm = ElmoBiLM.from_pretrained(os.path.join(directory, ELMO_DIR))
    else:
        bilm = None
    model = task.build(cfg, len(words) if words is not None else 0, labels, bilm)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{directory}: {WEIGHTS_NAME} is missing (training did not finish an epoch)")
    with _damaged(weights):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"a state_dict was expected, found a {type(state).__name__}")
    load_head_state(model, state)
    return cfg, task, words, labels, model.to(torch.device(device)).eval()
