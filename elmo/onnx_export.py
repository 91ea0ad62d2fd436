"""ONNX export of the stateless inference biLM, for serving with onnxruntime (extra ``[onnx]``).

    export_onnx(model, "elmo.onnx")          # or: elmo-export MODEL_DIR --onnx elmo.onnx
    session = OnnxBiLM("elmo.onnx")
    layers, mask = session(batch_to_ids(sentences))   # numpy (L+1, B, T, 2P), (B, T)

The graph takes char ids (B, T, 50) (int64, from ``batch_to_ids``; a row's tokens first, then
all-zero padding) and returns ``layers`` (L+1, B, T, 2P) float32 with the sentence boundaries
removed and zeros at padding, and ``mask`` (B, T) bool. Batch and length are dynamic axes.

The graph is ``ElmoBiLM.forward`` itself, captured by ``torch.export`` (the dynamo exporter):
``TokenBatch.from_char_ids`` (ONNX ``Unique``), ``add_sentence_boundaries``, the character CNN,
``BiLM`` and ``remove_sentence_boundaries``, the same modules and code as in eager mode. The
host-side parts of the eager path have a graph form chosen where they are: the value checks are
skipped, and ``BiLM`` runs every row for all T steps in input order through the layers'
``forward_dense`` (``elmo.cells.base``: the same step as the packed loop, in a
``torch.while_loop``, which becomes one ONNX ``Loop`` over a dynamic number of steps) and masks
the padding. Only the original cell is exported (``cell="lstm"``, no deep transition, no input
skip connections, no zoneout): other cells raise a ValueError naming the setting (the dense loop
runs the other stepped cells in eager mode, tests/elmo/test_cells_bilm.py, but their graphs are
not checked against onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from elmo.lstm import Lstm
from elmo.weights import original_lstm_problems


def check_exportable(model) -> None:
    """Raise a ValueError naming every setting the exported graph does not compute."""
    problems = original_lstm_problems(model.config)
    if not model.config.char_cnn.projection:  # (ElmoBiLM refuses it sentences: no ELMo layers)
        problems.append("char_cnn.projection=false (a language model only)")
    layers = list(model.bilm.forward_layers) + list(model.bilm.backward_layers)
    if not problems and not all(type(layer) is Lstm for layer in layers):
        problems.append("a biLM layer that is not elmo.lstm.Lstm")
    if problems:
        raise ValueError("the ONNX export covers the original LSTM biLM only; this model has "
                         + "; ".join(problems))


class GraphBiLM(nn.Module):
    """The exported function: char ids (B, T, C) -> (layers (L+1, B, T, 2P), mask (B, T)), by
    ``ElmoBiLM.forward`` (stateless: every row starts from the model's stored initial state)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(char_ids)
        return torch.stack(out.layers), out.mask


# The exporter and its graph optimizer log hundreds of INFO records (and notes such as "torchvision
# is not installed") that would drown a command's output: only their errors pass while it runs.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _errors_only(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model, path: Union[str, os.PathLike], opset: int = 18,
                example: Optional[torch.Tensor] = None) -> str:
    """Write ``model`` (an ``ElmoBiLM``) as an ONNX graph (atomically); returns the path.

    Inputs ``char_ids`` (batch, tokens, 50) int64; outputs ``layers`` (L+1, batch, tokens, 2P)
    float32 and ``mask`` (batch, tokens) bool; batch and tokens are dynamic. ``opset``: 18 or
    later (the dynamo exporter's own); ``example``: the char ids the graph is traced with.
    """
    try:
        import onnx  # noqa: F401  (the dynamo exporter writes with onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("exporting to ONNX needs onnx and onnxscript: pip install elmo-pytorch[onnx]") from None
    from elmo.io import atomic_path

    check_exportable(model)
    # a float32 CPU copy in evaluation, stateless: exporting leaves the user's model as it was
    copied = copy.deepcopy(model).float().cpu().eval()
    copied.stateful, copied._state = False, None
    if example is None:
        from elmo.chars import batch_to_ids

        example = batch_to_ids([["An", "example", "sentence", "."], ["Short"]])
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens")}
    with warnings.catch_warnings(), _errors_only(EXPORTER_LOGGERS), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        program = torch.onnx.export(
            GraphBiLM(copied).eval(), (example,), dynamo=True, opset_version=opset,
            input_names=["char_ids"], output_names=["layers", "mask"],
            dynamic_shapes=(axes,), verbose=False)
    with atomic_path(path) as tmp:
        program.save(tmp)
    return path


class OnnxBiLM:
    """An exported model run by onnxruntime: ``session(char_ids)`` -> (layers, mask) in numpy."""

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 providers: Optional[list] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("running an ONNX model needs onnxruntime: pip install elmo-pytorch[onnx]") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(path), options,
                                            providers=providers or ["CPUExecutionProvider"])

    def __call__(self, char_ids) -> tuple[np.ndarray, np.ndarray]:
        """char ids (B, T, 50) (a tensor or array) -> layers (L+1, B, T, 2P), mask (B, T)."""
        ids = char_ids.cpu().numpy() if isinstance(char_ids, torch.Tensor) else np.asarray(char_ids)
        layers, mask = self.session.run(None, {"char_ids": ids.astype(np.int64, copy=False)})
        return layers, mask

    def embed_batch(self, sentences) -> list:
        """Tokenized sentences -> one (L+1, n_i, 2P) float32 array each, as ``Embedder.embed_batch``."""
        from elmo.chars import batch_to_ids, check_sentence

        sentences = [check_sentence(s, i) for i, s in enumerate(sentences)]
        if not sentences:
            return []
        layers, _ = self(batch_to_ids(sentences, min_length=1))
        return [np.ascontiguousarray(layers[:, i, : len(s)]) for i, s in enumerate(sentences)]
