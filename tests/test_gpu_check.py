"""scripts/gpu_check.sh (issue 17 point 5): its benchmark code runs without ``datasets``, and its
CPU dry run produces the table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKED = r"""
import json, sys
sys.modules["datasets"] = None  # import datasets -> ImportError, as on a machine without it
sys.path.insert(0, "scripts")
import gpu_check, bench_pretrain, bench_embed
step = bench_pretrain.worker_gpu_step(dict(
    kind="gpu_step", config="tiny", batch=4, window=5, vocab=500, samples=16, threads=1,
    device="cpu", precision="fp32", compile=False, steps=2, warmup=1, peak_tflops=790.0))
embed = bench_embed.worker_gpu(dict(mode="gpu", device="cpu", threads=1, config="tiny",
                                    dtype="float32", compile=False, sentences=20, batch=8))
print(json.dumps({"step": step, "embed": embed, "datasets": "datasets" in sys.modules and
                  sys.modules["datasets"] is not None}))
"""


def test_the_gpu_check_path_needs_no_datasets():
    out = subprocess.run([sys.executable, "-c", BLOCKED], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["datasets"] is False
    step, embed = r["step"], r["embed"]
    assert step["tokens_per_s"] > 0 and 0 < step["loss"] < 20 and step["peak_mib"] > 0
    # The FLOP count is the formula's: 3 x (char CNN + highways + projection + LSTMs + softmax).
    assert 0 < step["mfu"] < 1e-3 and step["mflop_per_token"] > 1
    assert embed["tokens"] > 20 * 5 and embed["tokens_per_s"] > 0 and embed["model_tokens_per_s"] > 0


def test_training_flops_per_token_by_hand():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from bench_pretrain import train_flops_per_token
    from elmo.config import preset

    original = preset("original")
    # Per layer and direction: x W_x and h W_h (512 x 16384 each) and the projection (4096 x 512).
    lstm = 2 * 2 * (2 * (2 * 512 * 16384) + 2 * 4096 * 512)  # 2 layers x 2 directions
    conv = 2 * 16 * sum(w * n * (50 - w + 1) for w, n in
                        [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]])
    chars = conv + 2 * 2 * (2 * 2048 * 2048) + 2 * 2048 * 512
    softmax = 2 * 2 * 512 * 8193
    assert train_flops_per_token(original, 8192) == 3 * (lstm + chars + softmax)
    assert round(train_flops_per_token(original, 8192) / 1e6) == 663


@pytest.mark.slow
def test_the_dry_run_writes_the_table(tmp_path):
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in out.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    parts = [r.split("|")[1].strip() for r in rows]
    assert parts == ["tests/test_cuda.py", "train step", "train step", "embed"], table
    assert re.search(r"\d+ passed", rows[0])
    for row in rows[1:]:
        assert float(row.split("|")[5].strip().replace(",", "")) > 0, row  # tokens/s
    assert [r.split("|")[3].strip() for r in rows[1:3]] == ["4 x 6", "8 x 6"]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["plan"]["device"] == "cpu" and len(data["rows"]) == 4
