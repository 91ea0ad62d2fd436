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
if ! .venv/bin/python -c "import elmo, pretrain, tasks, pytest, matplotlib, datasets, tqdm" 2>/dev/null; then
  echo "[setup] installing the package (editable) with its dev extras" >&2
  "${PIP[@]}" install -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import torch, elmo; print(f'[setup] ok: torch {torch.__version__}, elmo {elmo.__version__}')" >&2
