"""ONNX export of the stateless inference biLM, for serving with onnxruntime (extra ``[onnx]``).

    export_onnx(model, "elmo.onnx")          # or: elmo-export MODEL_DIR --onnx elmo.onnx
    session = OnnxBiLM("elmo.onnx")
    layers, mask = session(batch_to_ids(sentences))   # numpy (L+1, B, T, 2P), (B, T)

The graph takes char ids (B, T, 50) (int64, from ``batch_to_ids``; a row's tokens first, then
all-zero padding) and returns ``layers`` (L+1, B, T, 2P) float32 with the sentence boundaries
removed and zeros at padding, and ``mask`` (B, T) bool. Batch and length are dynamic axes.
It computes what ``ElmoBiLM`` computes in stateless mode from the model's stored initial state
(zeros, or a warm state): the character CNN with ONNX ``Conv``, then each LSTM layer's input
projection for all steps at once and the recurrence as an ONNX ``Loop`` over time (both
directions in one loop; the backward one reads each row reversed within its own length).

Why the TorchScript exporter (``dynamo=False``): the recurrence is a loop over a dynamic number
of steps. The dynamo exporter traces it with ``torch.export``, which unrolls the loop for the
example's length (an ONNX model that accepts only that length); a ``torch.jit.script``-ed loop
becomes an ONNX ``Loop`` under the TorchScript exporter, which keeps the length dynamic.
Only the original cell is exported (``cell="lstm"``, no deep transition, no input skip
connections, no zoneout): other cells raise a ValueError naming the setting.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from elmo.chars import PADDING_CHAR, bos_eos_char_ids
from elmo.lstm import FORGET_BIAS, Lstm
from elmo.weights import original_lstm_problems

NO_CLIP = 3.0e38  # "no clipping" as a number (the exported graph has one code path)


def _step(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_h: torch.Tensor, w_p: torch.Tensor,
          cell_clip: float, proj_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of one direction: x (B, 4H) = x_t W_x + b, h (B, P), c (B, H) -> (h, c).
    Gate blocks in the order (i, f, o, g), as elmo.lstm."""
    H = c.shape[-1]
    gates = x + torch.matmul(h, w_h)  # (B, 4H)
    ifo = torch.sigmoid(gates[:, : 3 * H])  # one Sigmoid for three gates
    i, f, o = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :]
    c = torch.clamp(f * c + i * torch.tanh(gates[:, 3 * H :]), -cell_clip, cell_clip)
    h = torch.clamp(torch.matmul(o * torch.tanh(c), w_p), -proj_clip, proj_clip)  # (B, P)
    return h, c


def _recurrence(x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_h0: torch.Tensor,
                w_h1: torch.Tensor, w_p0: torch.Tensor, w_p1: torch.Tensor, cell_clip: float,
                proj_clip: float) -> torch.Tensor:
    """Both directions: x_proj (T, 2, B, 4H) = x W_x + b; h (2, B, P), c (2, B, H); W_h (P, 4H)
    and W_p (H, P) per direction. Returns the outputs (T, 2, B, P).

    Each direction has its own 2-D products rather than one batched product over both: a
    constant 2-D right-hand side is one that onnxruntime prepares (packs) once."""
    h0, c0, h1, c1 = h[0], c[0], h[1], c[1]
    outputs = []
    for t in range(x_proj.shape[0]):
        h0, c0 = _step(x_proj[t, 0], h0, c0, w_h0, w_p0, cell_clip, proj_clip)
        h1, c1 = _step(x_proj[t, 1], h1, c1, w_h1, w_p1, cell_clip, proj_clip)
        outputs.append(torch.stack([h0, h1]))
    return torch.stack(outputs)


with warnings.catch_warnings():  # torch.jit.script is deprecated, and still what makes a Loop
    warnings.simplefilter("ignore", DeprecationWarning)
    _step = torch.jit.script(_step)
    _recurrence = torch.jit.script(_recurrence)


def check_exportable(model) -> None:
    """Raise a ValueError naming every setting the exported graph does not compute."""
    problems = original_lstm_problems(model.config)
    layers = list(model.bilm.forward_layers) + list(model.bilm.backward_layers)
    if not problems and not all(type(layer) is Lstm for layer in layers):
        problems.append("a biLM layer that is not elmo.lstm.Lstm")
    if problems:
        raise ValueError("the ONNX export covers the original LSTM biLM only; this model has "
                         + "; ".join(problems))


def _reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (T, B, D): each row reversed within its own length; positions past it stay."""
    t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    n = lengths.unsqueeze(0)  # (1, B)
    index = torch.where(t < n, n - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(-1).expand(x.shape))


class StatelessBiLM(nn.Module):
    """The export-friendly twin of ``ElmoBiLM`` in stateless evaluation (the same weights)."""

    def __init__(self, model) -> None:
        super().__init__()
        check_exportable(model)
        cnn, cfg = model.char_cnn, model.config
        # copies in float32 on the CPU: exporting leaves the user's model as it was
        self.char_embedding, self.convolutions, self.highway, self.projection = (
            copy.deepcopy(m).float().cpu() for m in (cnn.char_embedding, cnn.convolutions,
                                                      cnn.highway, cnn.projection))
        self.relu = cfg.char_cnn.activation == "relu"
        self.max_width = max(width for width, _ in cfg.char_cnn.filters)
        self.padding_char = PADDING_CHAR + 1  # after the +1 shift of every id
        bos, eos = bos_eos_char_ids(cfg.char_cnn.max_characters_per_token)
        self.register_buffer("boundary", torch.from_numpy(np.stack([bos, eos]).astype(np.int64)),
                             persistent=False)  # (2, C)
        b = cfg.bilm
        self.skip = bool(b.use_skip_connections)
        self.cell_clip = float(b.cell_clip) if b.cell_clip else NO_CLIP
        self.proj_clip = float(b.proj_clip) if b.proj_clip else NO_CLIP
        self.n_layers = b.n_layers
        for k, (fwd, bwd) in enumerate(zip(model.bilm.forward_layers, model.bilm.backward_layers)):
            pair = (fwd, bwd)
            for d, layer in enumerate(pair):  # 2-D weights per direction (see _recurrence)
                self.register_buffer(f"w_x{k}_{d}", layer.input_weight.detach().float().cpu().contiguous())
                self.register_buffer(f"b{k}_{d}", layer.effective_bias().detach().float().cpu())
            for d, layer in enumerate(pair):
                self.register_buffer(f"w_h{k}_{d}", layer.state_weight.detach().float().cpu().contiguous())
                self.register_buffer(f"w_p{k}_{d}", layer.projection_weight.detach().float().cpu().contiguous())
            self.register_buffer(f"h0_{k}", torch.stack([l.initial_h.detach() for l in pair]).float().cpu())
            self.register_buffer(f"c0_{k}", torch.stack([l.initial_c.detach() for l in pair]).float().cpu())
        assert FORGET_BIAS == 1.0  # folded into b{k}_{d} by effective_bias

    def encode(self, chars: torch.Tensor) -> torch.Tensor:
        """chars (N, C) -> (N, P): the character CNN, highway and projection.

        Only the first ``used + max width`` character positions are convolved (``used``: the
        longest token's characters): a window wholly in the padding gives the same value for
        every token, so one such window is enough for the max (as ``CharCNN.trim_characters``).
        """
        used = (chars != self.padding_char).sum(-1).max()
        keep = torch.clamp(used + self.max_width, max=chars.shape[1])
        chars = chars.narrow(1, 0, keep)  # a dynamic Slice in the graph
        x = self.char_embedding(chars).transpose(1, 2)  # (N, e, C')
        pooled = [conv(x).max(dim=2).values for conv in self.convolutions]  # (N, count) each
        x = torch.cat(pooled, dim=-1)
        x = torch.relu(x) if self.relu else torch.tanh(x)
        return self.projection(self.highway(x))

    def forward(self, char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """char_ids (B, T, C) int64 -> layers (L+1, B, T, 2P) float32, mask (B, T) bool."""
        B, T, C = char_ids.shape[0], char_ids.shape[1], char_ids.shape[2]
        mask = (char_ids > 0).any(-1)  # (B, T)
        lengths = mask.sum(-1)  # (B,)
        # <S> before and </S> after each row's tokens: (B, T+2, C)
        pad = torch.zeros_like(char_ids[:, :1])
        ids = torch.cat([pad, char_ids, pad], dim=1)
        pos = torch.arange(T + 2, device=char_ids.device).unsqueeze(0)  # (1, T+2)
        is_bos = (pos == 0).unsqueeze(-1)
        is_eos = (pos == (lengths + 1).unsqueeze(1)).unsqueeze(-1)
        ids = torch.where(is_bos, self.boundary[0], torch.where(is_eos, self.boundary[1], ids))
        mask2 = pos <= (lengths + 1).unsqueeze(1)  # (B, T+2)
        # Each distinct token of the batch is encoded once (ONNX NonZero, Unique, Gather), as
        # ElmoBiLM does: padding positions and repeated words cost nothing in the char CNN.
        flat = ids.reshape(-1, C)  # (B*(T+2), C)
        rows = mask2.reshape(-1).nonzero().squeeze(1)  # (N,) real positions
        unique, inverse = torch.unique(flat.index_select(0, rows), dim=0, return_inverse=True)
        encoded = self.encode(unique).index_select(0, inverse)  # (N, P)
        tokens = torch.zeros((flat.shape[0], encoded.shape[1]), dtype=encoded.dtype)
        tokens = tokens.index_copy(0, rows, encoded).reshape(B, T + 2, -1)  # (B, T+2, P), zero at padding

        lengths2 = lengths + 2
        x = tokens.transpose(0, 1)  # (T+2, B, P)
        x_in = torch.stack([x, _reverse_within(x, lengths2)], dim=1)  # (T+2, 2, B, P)
        layers = [torch.cat([tokens, tokens], dim=-1)]
        for k in range(self.n_layers):
            h0, c0 = getattr(self, f"h0_{k}"), getattr(self, f"c0_{k}")
            x_proj = torch.stack([torch.matmul(x_in[:, d], getattr(self, f"w_x{k}_{d}"))
                                  + getattr(self, f"b{k}_{d}") for d in range(2)], dim=1)  # (T+2, 2, B, 4H)
            h = h0.unsqueeze(1) + torch.zeros_like(x_in[0, :, :, :1])  # (2, B, P)
            c = c0.unsqueeze(1) + torch.zeros_like(x_in[0, :, :, :1])  # (2, B, H)
            out = _recurrence(x_proj, h, c, getattr(self, f"w_h{k}_0"), getattr(self, f"w_h{k}_1"),
                              getattr(self, f"w_p{k}_0"), getattr(self, f"w_p{k}_1"),
                              self.cell_clip, self.proj_clip)  # (T+2, 2, B, P)
            if self.skip and k > 0:
                out = out + x_in
            both = torch.cat([out[:, 0], _reverse_within(out[:, 1], lengths2)], dim=-1)  # (T+2, B, 2P)
            layers.append(both.transpose(0, 1) * mask2.unsqueeze(-1).to(both.dtype))
            x_in = out
        stacked = torch.stack(layers)[:, :, 1 : T + 1]  # (L+1, B, T, 2P): boundaries removed
        return stacked * mask.unsqueeze(0).unsqueeze(-1).to(stacked.dtype), mask


def export_onnx(model, path: Union[str, os.PathLike], opset: int = 17,
                example: Optional[torch.Tensor] = None) -> str:
    """Write ``model`` (an ``ElmoBiLM``) as an ONNX graph (atomically); returns the path.

    Inputs ``char_ids`` (batch, tokens, 50) int64; outputs ``layers`` (L+1, batch, tokens, 2P)
    float32 and ``mask`` (batch, tokens) bool; batch and tokens are dynamic.
    """
    try:
        import onnx  # noqa: F401  (torch's TorchScript exporter needs it)
    except ImportError:
        raise ImportError("exporting to ONNX needs onnx: pip install elmo-pytorch[onnx]") from None
    from elmo.io import atomic_path

    twin = StatelessBiLM(model).eval()
    if example is None:
        from elmo.chars import batch_to_ids

        example = batch_to_ids([["An", "example", "sentence", "."], ["Short"]])
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            twin, (example,), tmp, dynamo=False, opset_version=opset,
            input_names=["char_ids"], output_names=["layers", "mask"],
            dynamic_axes={"char_ids": {0: "batch", 1: "tokens"},
                          "layers": {1: "batch", 2: "tokens"}, "mask": {0: "batch", 1: "tokens"}})
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
