"""What a run leaves in its directory, exporting it, and starting a new run from it.

A finished (or interrupted) run directory is a model directory of ``elmo``
(``elmo_config.json`` + ``elmo_weights.safetensors`` or ``.pt``, loadable with ``ElmoBiLM.from_pretrained`` and
``elmo-embed --model``) plus ``vocab.txt`` and ``lm_softmax.pt`` (the softmax, needed only to
continue training). ``export_original`` writes the original ``options.json`` + HDF5 layout.

``--init`` takes such a directory, a directory of original files, or one of our checkpoints; the
softmax rows of words in both the old and the new vocabulary are carried over, so a model can be
adapted to a new domain whose vocabulary differs.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import NamedTuple, Optional

import torch

from elmo.io import OutputPathError, atomic_open, check_output, clean_orphans, copy_atomic, same_file
from elmo.model import ElmoBiLM
from elmo.weights import save_original
from pretrain.lm import BidirectionalLM
from pretrain.vocab import Vocabulary

logger = logging.getLogger(__name__)

SOFTMAX_NAME = "lm_softmax.pt"
VOCAB_NAME = "vocab.txt"


def save_model_dir(lm: BidirectionalLM, vocab: Vocabulary, out_dir: str) -> None:
    """The biLM (elmo format), its softmax and the vocabulary, each written atomically."""
    lm.bilm.save_pretrained(out_dir)
    with atomic_open(os.path.join(out_dir, SOFTMAX_NAME), "wb") as f:
        torch.save({"kind": lm.softmax.kind,
                    "state": {k: v.detach().cpu() for k, v in lm.softmax.state_dict().items()}}, f)
    vocab.save(os.path.join(out_dir, VOCAB_NAME))


class InitModel(NamedTuple):
    bilm: ElmoBiLM
    vocab: Optional[Vocabulary]     # the softmax's vocabulary, when the source has one
    softmax: Optional[dict]         # {"kind", "state"} or None


def load_init(path: str) -> InitModel:
    """A model to start from: a model directory (ours or original files), a checkpoint file, or
    a URL / hub id / release name (``elmo.hub``: downloaded first)."""
    if not os.path.exists(path):
        from elmo.hub import resolve_model

        path = resolve_model(path)
    if os.path.isdir(path):
        bilm = ElmoBiLM.from_pretrained(path)
        soft, voc = os.path.join(path, SOFTMAX_NAME), os.path.join(path, VOCAB_NAME)
        if os.path.isfile(soft) and os.path.isfile(voc):
            return InitModel(bilm, Vocabulary.load(voc), torch.load(soft, weights_only=True))
        return InitModel(bilm, None, None)
    if os.path.isfile(path):
        from pretrain.checkpoint import load_checkpoint
        from pretrain.config import PretrainConfig

        data = load_checkpoint(path)
        config = PretrainConfig.from_dict(data["config"])
        model_state = data["model"]
        bilm = ElmoBiLM(config.model)
        bilm.load_state_dict({k[len("bilm."):]: v for k, v in model_state.items()
                              if k.startswith("bilm.")})
        soft = {"kind": "adaptive" if any(k.startswith("softmax.adaptive.") for k in model_state)
                else "full",
                "state": {k[len("softmax."):]: v for k, v in model_state.items() if k.startswith("softmax.")}}
        voc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), VOCAB_NAME)
        if os.path.isfile(voc):
            return InitModel(bilm, Vocabulary.load(voc), soft)
        logger.warning("%s: no %s next to the checkpoints folder; the softmax starts afresh", path, VOCAB_NAME)
        return InitModel(bilm, None, None)
    raise FileNotFoundError(f"--init {path}: no such model directory or checkpoint file")


@torch.no_grad()
def transfer_softmax(lm: BidirectionalLM, vocab: Vocabulary, init: InitModel) -> int:
    """Copy the softmax rows of words known to both vocabularies; returns how many."""
    if init.softmax is None or init.vocab is None:
        return 0
    state = init.softmax["state"]
    if lm.softmax.kind == "adaptive" or "weight" not in state:
        if init.vocab == vocab and lm.softmax.kind == "adaptive" and "weight" not in state:
            lm.softmax.load_state_dict(state)
            return len(vocab)
        logger.warning("the adaptive softmax is carried over only with the same vocabulary and kind; "
                       "it starts afresh")
        return 0
    old = {w: i for i, w in enumerate(init.vocab.words)}
    pairs = [(i, old[w]) for i, w in enumerate(vocab.words) if w in old]
    new_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    old_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    lm.softmax.weight[new_ids] = state["weight"][old_ids].to(lm.softmax.weight.dtype)
    lm.softmax.bias[new_ids] = state["bias"][old_ids].to(lm.softmax.bias.dtype)
    return len(pairs)


def export_original(model_dir: str, options_file: str, weight_file: str,
                    vocab_file: Optional[str] = None, force: bool = True) -> None:
    """Write the original options.json + weights HDF5 (and the vocabulary) of a model directory.

    Before anything is loaded or written: no output may be a file of ``model_dir`` (also through
    a link) or another output, each output's folder must exist, and with ``force=False`` an
    existing output is refused (``elmo.io.OutputPathError``, a ValueError). Missing folders are
    created."""
    outputs = [("--options-file", options_file), ("--weight-file", weight_file),
               ("--vocab", vocab_file)]
    inputs = ([os.path.join(model_dir, n) for n in sorted(os.listdir(model_dir))]
              if os.path.isdir(model_dir) else [])
    seen: list = []
    for flag, path in outputs:
        if path is None:
            continue
        check_output(path, inputs=inputs, force=force, what=flag, create_folder=True)
        for other_flag, other in seen:
            if same_file(path, other):  # the same path too, even before either exists
                raise OutputPathError(f"{flag} {path} is the same path as {other_flag}; give each "
                                      "output its own file")
        seen.append((flag, path))
    if vocab_file and not os.path.isfile(os.path.join(model_dir, VOCAB_NAME)):
        raise FileNotFoundError(f"{model_dir}: no {VOCAB_NAME} to export (it is written by elmo-pretrain)")
    for _, path in seen:  # temporary files of an earlier, killed export of the same outputs
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            continue
        for orphan in clean_orphans(os.path.dirname(os.path.abspath(path)),
                                    glob.escape(os.path.basename(path))):
            logger.info("removed %s (left by a process that no longer runs)", orphan)
    model = ElmoBiLM.from_pretrained(model_dir)
    save_original(model, options_file, weight_file)
    if vocab_file:
        copy_atomic(os.path.join(model_dir, VOCAB_NAME), vocab_file)


def export_onnx_file(model: str, onnx_file: str, force: bool = True) -> str:
    """Write ``model`` (any ``ElmoBiLM.from_pretrained`` source) as ONNX (``elmo.onnx_export``)."""
    from elmo.onnx_export import export_onnx

    inputs = [os.path.join(model, n) for n in sorted(os.listdir(model))] if os.path.isdir(model) else []
    check_output(onnx_file, inputs=inputs, force=force, what="--onnx")
    return export_onnx(ElmoBiLM.from_pretrained(model), onnx_file)
