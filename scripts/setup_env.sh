#!/usr/bin/env bash
# Create .venv (if missing) and install the package with its test extras.
# torch 2.13.0 is installed first: on this machine that is a local CPU wheel; a bare `torch`
# requirement would pull a multi-GB CUDA build. GPU users: install your CUDA torch first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0" >&2
  "${PIP[@]}" install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
# Every optional extra ([all]: hub, safetensors, spacy, onnx) is installed too, so that their tests
# run in CI (about 20 s more from the local wheel cache; spaCy is the largest). The last check
# also needs the spacy_factories entry point, which only an install of this checkout registers.
if ! .venv/bin/python -c "import elmo, pretrain, tasks, pytest, matplotlib, datasets, tqdm, \
    huggingface_hub, safetensors, spacy, onnx, onnxruntime, onnxscript, importlib.metadata as m; \
    assert 'elmo' in {e.name for e in m.entry_points(group='spacy_factories')}" 2>/dev/null; then
  echo "[setup] installing the package (editable) with its dev extras and all integrations" >&2
  "${PIP[@]}" install -e ".[dev,all]" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import torch, elmo; print(f'[setup] ok: torch {torch.__version__}, elmo {elmo.__version__}')" >&2
