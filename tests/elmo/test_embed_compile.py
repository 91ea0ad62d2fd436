"""elmo-embed --compile (issue 17 point 2): the same HDF5 output as eager. Traced with the
``aot_eager`` backend (Dynamo + AOTAutograd, no code generation) to stay fast on a CPU."""

import functools

import h5py
import numpy as np
import pytest
import torch

from elmo import ElmoBiLM
from elmo.cli import main


@pytest.mark.slow  # ~25 s of CPU: the featurizer's traced path is also in tests/test_cuda.py
def test_embed_compile_writes_the_eager_output(tmp_path, tiny_config, monkeypatch):
    torch.manual_seed(0)
    ElmoBiLM(tiny_config).save_pretrained(tmp_path / "model")
    src = tmp_path / "in.txt"
    src.write_text("The cat sat .\nHello !\n\nA longer line with more words in it .\n", encoding="utf-8")
    assert main([str(src), str(tmp_path / "eager.hdf5"), "--model", str(tmp_path / "model"), "--quiet",
                 "--device", "cpu"]) == 0
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    assert main([str(src), str(tmp_path / "compiled.hdf5"), "--model", str(tmp_path / "model"), "--quiet",
                 "--device", "cpu", "--compile"]) == 0
    with h5py.File(tmp_path / "eager.hdf5", "r") as a, h5py.File(tmp_path / "compiled.hdf5", "r") as b:
        assert sorted(a.keys()) == sorted(b.keys()) == ["0", "1", "2", "3", "sentence_to_index"]
        for key in ("0", "1", "2", "3"):
            assert a[key].shape == b[key].shape
            np.testing.assert_allclose(a[key][...], b[key][...], rtol=0, atol=1e-5)
