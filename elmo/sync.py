"""Where the library may read tensor values back to the host.

On a CPU that costs nothing; on a GPU every read (``.item()``, ``int(t)``, ``.tolist()``, a branch
on a value, indexing with a boolean mask) waits until the device has finished everything queued
before it, which empties the queue that keeps the GPU busy. Code that reads values only to
*check* its inputs or to *trim* work asks ``may_sync(tensor)`` first and skips that on a GPU, so a
pretraining step or a featurizer batch runs without a synchronisation there.

The tests replace ``may_sync`` (``monkeypatch.setattr(elmo.sync, "may_sync", ...)``) to run the
GPU code path on a CPU and count the reads that remain; callers therefore look it up as
``sync.may_sync`` at call time.
"""

from __future__ import annotations

import torch


def may_sync(tensor: torch.Tensor) -> bool:
    """True when reading ``tensor``'s values on the host is free: a CPU tensor, outside
    ``torch.compile`` (where a read would split the graph)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()
