"""Model folders: safetensors weights (no pickle), folders of earlier versions, the fallback."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys

import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids
from elmo import serialization
from elmo.serialization import find_weights, load_weights, save_weights

pytest.importorskip("safetensors")
SENTENCES = [["Safe", "tensors", "."], ["ok"]]


def _layers(model):
    with torch.no_grad():
        return model.eval()(batch_to_ids(SENTENCES)).layers


def _same(a, b):
    for x, y in zip(_layers(a), _layers(b), strict=True):
        assert torch.equal(x, y)


def test_safetensors_folder_loads_without_unpickling(tmp_path, tiny_config, monkeypatch):
    model = ElmoBiLM(tiny_config)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "elmo_weights.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])  # safetensors: header length, JSON header, raw tensors
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    digest = (tmp_path / "m" / "elmo_weights.safetensors.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(data).hexdigest()

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called for a safetensors folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    _same(ElmoBiLM.from_pretrained(tmp_path / "m"), model)


def test_a_folder_written_by_an_earlier_version_still_loads(tmp_path, tiny_config):
    model = ElmoBiLM(tiny_config)
    folder = tmp_path / "old"
    folder.mkdir()
    # what ElmoBiLM.save_pretrained wrote before safetensors: config + torch.save(state_dict)
    model.config.save(str(folder / "elmo_config.json"))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "elmo_weights.pt")
    assert find_weights(folder) == str(folder / "elmo_weights.pt")
    _same(ElmoBiLM.from_pretrained(folder), model)


def test_one_format_per_folder_and_the_fallback_without_safetensors(tmp_path, tiny_config, monkeypatch):
    first, second = ElmoBiLM(tiny_config), ElmoBiLM(tiny_config)
    first.save_pretrained(tmp_path / "m")
    second.save_pretrained(tmp_path / "m", safe_serialization=False)  # replaces the safetensors file
    assert sorted(os.listdir(tmp_path / "m")) == ["elmo_config.json", "elmo_weights.pt",
                                                  "elmo_weights.pt.sha256"]
    _same(ElmoBiLM.from_pretrained(tmp_path / "m"), second)
    first.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["elmo_config.json", "elmo_weights.safetensors",
                                                  "elmo_weights.safetensors.sha256"]
    _same(ElmoBiLM.from_pretrained(tmp_path / "m"), first)

    # safetensors not installed: torch.save is used, and a safetensors file names the extra
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert not serialization.have_safetensors()
    assert save_weights(second.state_dict(), tmp_path / "n").endswith("elmo_weights.pt")
    with pytest.raises(ImportError, match=r"pip install elmo-pytorch\[safetensors\]"):
        load_weights(str(tmp_path / "m" / "elmo_weights.safetensors"))
    with pytest.raises(ImportError, match=r"elmo-pytorch\[safetensors\]"):
        save_weights(second.state_dict(), tmp_path / "k", safe_serialization=True)
    assert not os.path.exists(tmp_path / "k" / "elmo_weights.safetensors")
