"""Cached ELMo layers: with the biLM frozen, each sentence's layers are computed once.

The stateless ``ElmoBiLM`` gives a sentence the same layers whatever batch it is in, so the
layers can be computed once (sentences sorted by length, batched, under ``inference_mode``) and
the task head trained on them: no epoch runs the biLM again. This is exact, not an approximation
(the original recomputed the frozen biLM in every epoch).

Two stores: in memory, or an HDF5 file that later runs reuse. In memory, the sentences of one
``fill`` share one (L+1, tokens + 1, 2P) tensor (row 0 stays zero), so a padded batch is one
``index_select`` rather than a zero-filled tensor and a copy per sentence, and a long cache is a
few large blocks instead of one allocation per sentence. The file holds one group
per model, named by a fingerprint of the model's configuration and weights, with one dataset
(L+1, n, 2P) per sentence named by a hash of its tokens; a different model never reads another's
layers. New layers are written to a temporary copy that replaces the file when complete, so an
interrupted run leaves the old file intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Iterable, Optional, Sequence

import h5py
import numpy as np
import torch
from tqdm import tqdm

from elmo import ElmoBiLM, ElmoOutput, batch_to_tokens
from elmo.dump import model_fingerprint as dump_fingerprint
from elmo.io import atomic_path

logger = logging.getLogger(__name__)


def model_fingerprint(bilm: ElmoBiLM) -> str:
    """The name of a model's group in the cache file: ``elmo.dump.model_fingerprint`` (the
    configuration and every tensor of the state, weights and warm state), shortened."""
    return dump_fingerprint(bilm)[:24]


def sentence_key(tokens: Sequence[str]) -> str:
    return hashlib.sha1(json.dumps(list(tokens), ensure_ascii=False).encode("utf-8")).hexdigest()


def compute_layers(bilm: ElmoBiLM, sentences: Sequence[Sequence[str]], batch_size: int = 64,
                   progress: bool = False) -> Iterable[tuple[int, torch.Tensor]]:
    """Yield (index, layers (L+1, n, 2P) float32 on the CPU) for every sentence, longest first."""
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    device = next(bilm.parameters()).device
    width = bilm.config.char_cnn.max_characters_per_token  # 50 in every released model
    was_training = bilm.training
    bilm.eval()
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc="ELMo layers", unit="batch", disable=not progress):
            rows = order[s : s + batch_size]
            tokens = batch_to_tokens([sentences[i] for i in rows], width).to(device)
            with torch.inference_mode():
                stacked = torch.stack(bilm(tokens).layers).float().cpu()  # (L+1, B, T, 2P)
            stacked = stacked.clone()  # an ordinary tensor (autograd may save it later)
            for b, i in enumerate(rows):
                yield i, stacked[:, b, : len(sentences[i])].clone()
    finally:
        bilm.train(was_training)


class LayerCache:
    """Per-sentence ELMo layers, in memory or in an HDF5 file (``path``)."""

    def __init__(self, bilm: ElmoBiLM, path: Optional[str] = None, dtype: str = "float32",
                 batch_size: int = 64, progress: bool = False) -> None:
        bilm.check_has_elmo_layers()
        self.bilm, self.path, self.batch_size, self.progress = bilm, path, batch_size, progress
        self.dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
        self.num_layers, self.dim = bilm.num_layers, bilm.output_dim
        self.fingerprint = model_fingerprint(bilm)
        self._memory: dict[str, tuple[int, int, int]] = {}  # key -> (block, first row, length)
        self._blocks: list[torch.Tensor] = []  # (L+1, rows, 2P) each, row 0 zero
        self._file: Optional[h5py.File] = None

    # -- filling ---------------------------------------------------------------------------
    def fill(self, sentences: Iterable[Sequence[str]]) -> int:
        """Compute and store the layers of every sentence not cached yet; returns how many."""
        missing: dict[str, list] = {}
        for tokens in sentences:
            key = sentence_key(tokens)
            if key not in missing and not self._has(key):
                missing[key] = list(tokens)
        if not missing:
            return 0
        todo = list(missing.values())
        logger.info("computing ELMo layers of %d sentences (%d tokens)", len(todo), sum(map(len, todo)))
        if self.path is None:
            self._fill_memory(todo)
        else:
            self._fill_file(todo)
        return len(todo)

    def _fill_memory(self, todo: list) -> None:
        starts, row = [], 1
        for tokens in todo:
            starts.append(row)
            row += len(tokens)
        block = torch.empty((self.num_layers, row, self.dim), dtype=self.dtype)
        block[:, 0] = 0
        for i, layers in compute_layers(self.bilm, todo, self.batch_size, self.progress):
            block[:, starts[i] : starts[i] + len(todo[i])] = layers
        self._blocks.append(block)
        for tokens, start in zip(todo, starts):
            self._memory[sentence_key(tokens)] = (len(self._blocks) - 1, start, len(tokens))

    def _fill_file(self, todo: list) -> None:
        self.close()
        # The cache file is replaced whole: a copy gets the new sentences, then takes its place.
        with atomic_path(self.path) as tmp:
            if os.path.exists(self.path):
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as f:
                group = f.require_group(self.fingerprint)
                group.attrs["num_layers"], group.attrs["dim"] = self.num_layers, self.dim
                np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
                for i, layers in compute_layers(self.bilm, todo, self.batch_size, self.progress):
                    key = sentence_key(todo[i])
                    if key not in group:
                        group.create_dataset(key, data=layers.numpy().astype(np_dtype))

    # -- reading ---------------------------------------------------------------------------
    def _group(self) -> Optional[h5py.Group]:
        if self.path is None or not os.path.exists(self.path):
            return None
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise OSError(f"{self.path}: cannot read the ELMo layer cache ({e}); delete the file "
                              "and it will be rebuilt") from None
        return self._file.get(self.fingerprint)

    def _has(self, key: str) -> bool:
        if self.path is None:
            return key in self._memory
        group = self._group()
        return group is not None and key in group

    def get(self, tokens: Sequence[str]) -> torch.Tensor:
        """Layers (L+1, n, 2P) float32 of one cached sentence."""
        key = sentence_key(tokens)
        if self.path is None:
            where = self._memory.get(key)
            layers = None if where is None else self._blocks[where[0]][:, where[1] : where[1] + where[2]]
        else:
            group = self._group()
            layers = torch.from_numpy(group[key][()]) if group is not None and key in group else None
        if layers is None:
            raise KeyError(f"sentence not in the ELMo layer cache (call fill first): {' '.join(tokens)[:80]!r}")
        return layers.float()

    def batch(self, sentences: Sequence[Sequence[str]], length: Optional[int] = None) -> torch.Tensor:
        """Padded layers (L+1, B, T, 2P) of cached sentences, zeros past each sentence."""
        T = max([len(s) for s in sentences] + [length or 0])
        if self.path is None:
            where = [self._memory.get(sentence_key(tokens)) for tokens in sentences]
            blocks = {w[0] for w in where if w is not None}
            if None not in where and len(blocks) == 1:  # one gather from the block
                starts, lengths = torch.tensor([[w[1], w[2]] for w in where]).unbind(1)
                steps = torch.arange(T)
                rows = torch.where(steps < lengths.unsqueeze(1), starts.unsqueeze(1) + steps, 0)  # (B, T)
                out = self._blocks[blocks.pop()].index_select(1, rows.view(-1))
                return out.view(self.num_layers, len(sentences), T, self.dim).float()
        out = torch.zeros(self.num_layers, len(sentences), T, self.dim)
        for b, tokens in enumerate(sentences):
            out[:, b, : len(tokens)] = self.get(tokens)
        return out

    def output(self, sentences: Sequence[Sequence[str]], length: Optional[int] = None) -> ElmoOutput:
        """The cached sentences as the biLM's ``ElmoOutput``: layers (L+1, B, T, 2P), one stacked
        tensor, zeros past each sentence; mask (B, T)."""
        layers = self.batch(sentences, length)
        lengths = torch.tensor([len(s) for s in sentences])
        mask = torch.arange(layers.shape[2]).unsqueeze(0) < lengths.unsqueeze(1)
        return ElmoOutput(layers, mask)

    def __len__(self) -> int:
        if self.path is None:
            return len(self._memory)
        group = self._group()
        return 0 if group is None else len(group)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
