"""The weights file of our model folders: safetensors when installed, a torch state dict otherwise.

    DIR/elmo_config.json                  the ElmoConfig (JSON)
    DIR/elmo_weights.safetensors          the state dict: no pickle, memory-mapped when read
    DIR/elmo_weights.safetensors.sha256   its digest (``sha256sum`` format), checked after downloads

``safetensors`` is the optional extra ``[safetensors]``; without it the weights are written as
``elmo_weights.pt`` (``torch.save`` of a plain state dict, read back with
``torch.load(weights_only=True)``), which is also what folders written by earlier versions hold:
both keep loading. When a folder holds both (written by two versions), safetensors wins.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from elmo.hub import WEIGHT_NAMES, write_digest
from elmo.io import atomic_path

SAFETENSORS_NAME, TORCH_NAME = WEIGHT_NAMES  # "elmo_weights.safetensors", "elmo_weights.pt"


def have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def save_weights(state: dict, directory: Union[str, os.PathLike],
                 safe_serialization: Optional[bool] = None, checksum: bool = True) -> str:
    """Write ``state`` (a state dict) into ``directory`` atomically; returns the file written.

    ``safe_serialization``: True = safetensors (ImportError naming the extra if it is missing),
    False = torch.save, None = safetensors when installed. The other format's file, if an
    earlier save left one, is removed so that the folder holds one set of weights.
    """
    if safe_serialization is None:
        safe_serialization = have_safetensors()
    if safe_serialization and not have_safetensors():
        raise ImportError("safe_serialization=True needs safetensors: pip install elmo-pytorch[safetensors]")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    name, stale = (SAFETENSORS_NAME, TORCH_NAME) if safe_serialization else (TORCH_NAME, SAFETENSORS_NAME)
    path = os.path.join(directory, name)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:  # PATH.tmp.PID, replaced when complete; a full disk: DiskFullError
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
    if checksum:
        write_digest(path)
    for old in (os.path.join(directory, stale), os.path.join(directory, stale + ".sha256")):
        if os.path.exists(old):
            os.remove(old)
    if not checksum and os.path.exists(path + ".sha256"):
        os.remove(path + ".sha256")  # it would describe an earlier file
    return path


def find_weights(directory: Union[str, os.PathLike]) -> Optional[str]:
    """The weights file of one of our model folders (safetensors first), or None."""
    for name in WEIGHT_NAMES:
        path = os.path.join(os.fspath(directory), name)
        if os.path.isfile(path):
            return path
    return None


def load_weights(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a state dict written by ``save_weights`` (either format) without unpickling."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{path} is a safetensors file; reading it needs safetensors: "
                              "pip install elmo-pytorch[safetensors]") from None
        # load_file maps the file into memory and reads each tensor from the mapping.
        return load_file(path, device=str(torch.device(map_location)))
    return torch.load(path, map_location=map_location, weights_only=True)
