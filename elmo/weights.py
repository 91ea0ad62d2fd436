"""Read and write the original ELMo weight files (bilm-tf's ``dump_weights`` layout).

``options.json`` holds the sizes; the HDF5 file holds TensorFlow-layout arrays (matrices are
(in, out), ``y = x W``):

    char_embed                                       (n_characters - 1, e)  [no padding row]
    CNN/W_cnn_{i}, CNN/b_cnn_{i}                     (1, width, e, count), (count,)
    CNN_high_{k}/W_transform, b_transform            (n, n), (n,)
    CNN_high_{k}/W_carry, b_carry                    (n, n), (n,)  [the gate t of Highway]
    CNN_proj/W_proj, CNN_proj/b_proj                 (n, P), (P,)
    RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/W_0    (in + P, 4H), gate blocks (i, g, f, o)
    RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/B      (4H,)  [forget bias +1.0 added at run time]
    RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/W_P_0  (H, P)
    d = 0 forward, 1 backward.

Our LSTM keeps the (in, out) layout and the bias as stored (adding the +1.0 at run time too) but
orders gate blocks (i, f, o, g) (see ``elmo.lstm``).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional

import h5py
import numpy as np
import torch

from elmo.config import ElmoConfig
from elmo.io import atomic_path, ensure_free_space
from elmo.model import ElmoBiLM

# Column blocks: ours (i, f, o, g) taken from TF's (i, g, f, o).
_TF_TO_OURS = (0, 2, 3, 1)
_OURS_TO_TF = (0, 3, 1, 2)


def _reorder_gates(w: np.ndarray, order: tuple, axis: int) -> np.ndarray:
    blocks = np.split(w, 4, axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


def _lstm_prefix(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def original_arrays_to_state_dict(config: ElmoConfig, read) -> dict:
    """Our ``state_dict`` for ``ElmoBiLM(config)`` from ``read(name, expected_shape) -> ndarray``."""
    c, b = config.char_cnn, config.bilm
    e, n, P, H = c.embedding_dim, c.n_filters, b.projection_dim, b.dim
    sd = {}
    emb = read("char_embed", (c.n_characters - 1, e))
    sd["char_cnn.char_embedding.weight"] = np.concatenate([np.zeros((1, e), emb.dtype), emb])
    for i, (width, count) in enumerate(c.filters):
        w = read(f"CNN/W_cnn_{i}", (1, width, e, count))
        sd[f"char_cnn.convolutions.{i}.weight"] = w[0].transpose(2, 1, 0)  # (count, e, width)
        sd[f"char_cnn.convolutions.{i}.bias"] = read(f"CNN/b_cnn_{i}", (count,))
    for k in range(c.n_highway):
        g = f"CNN_high_{k}"
        sd[f"char_cnn.highway.layers.{k}.weight"] = np.concatenate(
            [read(f"{g}/W_transform", (n, n)).T, read(f"{g}/W_carry", (n, n)).T])
        sd[f"char_cnn.highway.layers.{k}.bias"] = np.concatenate(
            [read(f"{g}/b_transform", (n,)), read(f"{g}/b_carry", (n,))])
    sd["char_cnn.projection.weight"] = read("CNN_proj/W_proj", (n, P)).T
    sd["char_cnn.projection.bias"] = read("CNN_proj/b_proj", (P,))
    for d, name in enumerate(("forward_layers", "backward_layers")):
        for layer in range(b.n_layers):
            pre, ours = _lstm_prefix(d, layer), f"bilm.{name}.{layer}"
            w = _reorder_gates(read(f"{pre}/W_0", (P + P, 4 * H)), _TF_TO_OURS, axis=1)
            bias = _reorder_gates(read(f"{pre}/B", (4 * H,)), _TF_TO_OURS, axis=0)
            sd[f"{ours}.input_weight"] = w[:P]
            sd[f"{ours}.input_bias"] = bias
            sd[f"{ours}.state_weight"] = w[P:]
            sd[f"{ours}.projection_weight"] = read(f"{pre}/W_P_0", (H, P))
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def state_dict_to_original_arrays(model: ElmoBiLM) -> dict:
    """The inverse: dataset name -> float32 ndarray in the original layout."""
    config = model.config
    c, b = config.char_cnn, config.bilm
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    n = c.n_filters
    out = {"char_embed": sd["char_cnn.char_embedding.weight"][1:]}
    for i, _ in enumerate(c.filters):
        out[f"CNN/W_cnn_{i}"] = sd[f"char_cnn.convolutions.{i}.weight"].transpose(2, 1, 0)[None]
        out[f"CNN/b_cnn_{i}"] = sd[f"char_cnn.convolutions.{i}.bias"]
    for k in range(c.n_highway):
        w, bias = sd[f"char_cnn.highway.layers.{k}.weight"], sd[f"char_cnn.highway.layers.{k}.bias"]
        out[f"CNN_high_{k}/W_transform"], out[f"CNN_high_{k}/W_carry"] = w[:n].T, w[n:].T
        out[f"CNN_high_{k}/b_transform"], out[f"CNN_high_{k}/b_carry"] = bias[:n], bias[n:]
    out["CNN_proj/W_proj"] = sd["char_cnn.projection.weight"].T
    out["CNN_proj/b_proj"] = sd["char_cnn.projection.bias"]
    for d, name in enumerate(("forward_layers", "backward_layers")):
        for layer in range(b.n_layers):
            pre, ours = _lstm_prefix(d, layer), f"bilm.{name}.{layer}"
            w = np.concatenate([sd[f"{ours}.input_weight"], sd[f"{ours}.state_weight"]])
            bias = sd[f"{ours}.input_bias"]
            out[f"{pre}/W_0"] = _reorder_gates(w, _OURS_TO_TF, axis=1)
            out[f"{pre}/B"] = _reorder_gates(bias, _OURS_TO_TF, axis=0)
            out[f"{pre}/W_P_0"] = sd[f"{ours}.projection_weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def read_options(options_file: str | os.PathLike) -> ElmoConfig:
    try:
        with open(options_file, encoding="utf-8") as f:
            options = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"options file not found: {options_file}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{options_file}: not valid JSON ({e})") from None
    return ElmoConfig.from_options(options)


def load_original(options_file: str | os.PathLike, weight_file: str | os.PathLike) -> ElmoBiLM:
    """Build an ``ElmoBiLM`` from the original ``options.json`` and weights HDF5 (local paths,
    or http(s) URLs: downloaded and cached by ``elmo.hub.resolve_file``)."""
    from elmo.hub import resolve_file

    options_file, weight_file = resolve_file(options_file), resolve_file(weight_file)
    config = read_options(options_file)
    if not os.path.isfile(weight_file):
        raise FileNotFoundError(f"weight file not found: {weight_file}")
    model = ElmoBiLM(config)
    try:
        f = h5py.File(weight_file, "r")
    except OSError as e:
        raise ValueError(f"{weight_file}: not a readable HDF5 weight file ({_first_line(e)}); is it "
                         "truncated (an interrupted copy or download)? Copy it again") from None
    used = set()
    with f:
        def read(name: str, shape: tuple) -> np.ndarray:
            used.add(name)
            if name not in f:
                raise ValueError(f"{weight_file}: dataset {name!r} is missing (expected shape {shape}); "
                               f"is {options_file} the options file for this weight file?")
            try:
                arr = f[name][...]
            except OSError as e:
                raise ValueError(f"{weight_file}: dataset {name!r} cannot be read ({_first_line(e)}); "
                                 "is the file truncated or corrupt? Copy it again") from None
            if arr.shape != tuple(shape):
                raise ValueError(f"{weight_file}: dataset {name!r} has shape {arr.shape}, expected "
                                 f"{tuple(shape)} from {options_file}; the options and weight files "
                                 "do not match")
            return arr

        state = original_arrays_to_state_dict(config, read)
        leftover = sorted(set(_dataset_names(f)) - used)
    if leftover:
        # Weights the options do not use: e.g. n_highway or n_layers too small in options.json.
        # Loading them would silently compute another function than the one trained.
        shown = ", ".join(leftover[:6]) + (f", ... ({len(leftover)} in all)" if len(leftover) > 6 else "")
        raise ValueError(f"{weight_file}: datasets that {options_file} does not use: {shown}; the "
                         "options file describes a smaller model (check lstm.n_layers, "
                         "char_cnn.n_highway and char_cnn.filters)")
    # Buffers that the original format does not hold (the fixed initial state) stay as built.
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("initial_h", "initial_c")) for k in missing), missing
    return model


def _dataset_names(f: h5py.File) -> list:
    names: list = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def nonfinite_tensors(model: torch.nn.Module) -> list:
    """Names of the floating-point parameters and buffers that hold NaN or inf (empty if none)."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_original(model: ElmoBiLM, options_file: str | os.PathLike, weight_file: str | os.PathLike) -> None:
    """Write ``options.json`` and the weights HDF5 in the original layout (each atomically).

    A stored warm initial state is not part of the original format and is not written.
    Only the original architecture can be written: a model with another cell (elmo.cells), a
    deep transition, input skip connections or zoneout is refused with a ValueError.
    """
    check_original_compatible(model.config)
    arrays = state_dict_to_original_arrays(model)
    # HDF5 can crash the process when the disk fills up mid-write: check the room first.
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(weight_file))), exist_ok=True)
    ensure_free_space(weight_file, sum(a.nbytes for a in arrays.values()) + (1 << 20))
    for path, writer in ((weight_file, _write_hdf5), (options_file, _write_json)):
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp:
            writer(tmp, arrays if writer is _write_hdf5 else model.config.to_options())


def original_lstm_problems(config: ElmoConfig) -> list[str]:
    """The settings that make a biLM other than the original LSTM one, each with its reason
    (empty for the original). The original weight format and the ONNX export both need it.

    Variational and semeniuta recurrent dropout are allowed: they act only in training, so the
    exported LSTM computes the same outputs. Zoneout changes the evaluation-time function.
    """
    b = config.bilm
    problems = []
    if b.cell != "lstm":
        problems.append(f"cell={b.cell!r} (the original biLM is an LSTM)")
    if b.transition_depth != 1:
        problems.append(f"transition_depth={b.transition_depth} (extra transition weights)")
    if b.input_skip_connections:
        problems.append("input_skip_connections=true (the original has no such connections)")
    if b.recurrent_dropout_kind == "zoneout":
        problems.append("recurrent_dropout_kind='zoneout' (it changes the evaluation-time outputs)")
    return problems


def check_original_compatible(config: ElmoConfig) -> None:
    """Raise a ValueError naming every setting the original format cannot hold."""
    problems = original_lstm_problems(config)
    if problems:
        raise ValueError("cannot write the original ELMo format (options.json + weights.hdf5) for this "
                         "model: " + "; ".join(problems) + ". Save it with ElmoBiLM.save_pretrained "
                         "(this package's format) instead.")


def _write_hdf5(path: str, arrays: dict) -> None:
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr)


def _write_json(path: str, options: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(options, f, indent=2)
        f.write("\n")


def find_original_files(directory: str | os.PathLike) -> Optional[tuple[str, str]]:
    """(options.json, weights.hdf5) in a directory holding the original format, else None."""
    options = os.path.join(directory, "options.json")
    if not os.path.isfile(options):
        candidates = sorted(glob.glob(os.path.join(directory, "*options*.json")))
        if len(candidates) != 1:
            return None
        options = candidates[0]
    weights = sorted(p for p in glob.glob(os.path.join(directory, "*.hdf5"))
                     if "weight" in os.path.basename(p))
    if len(weights) != 1:
        return None
    return options, weights[0]
