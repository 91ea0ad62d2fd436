#!/usr/bin/env bash
# The GPU check of issue 17, prepared for a machine with one CUDA GPU (at most 8 minutes):
# tests/test_cuda.py, the training-step grid (ORIGINAL and SMALL, 128/256/512 rows x 20 tokens,
# 100,000-word vocabulary, 8,192 sampled negatives, bf16, eager and compiled) and the featurizer;
# one table, printed and written to $OUT/gpu_check.md (else runs/gpu_check/gpu_check.md).
#
#   bash scripts/gpu_check.sh             # on the GPU machine, from a copy of the working tree
#   bash scripts/gpu_check.sh --dry-run   # the same logic on the CPU with tiny sizes
#
# Uses .venv/bin/python when there is one, else python3 from PATH (torch, numpy, h5py needed;
# datasets is not); installs this package without dependencies if it is not importable.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import elmo, pretrain" 2>/dev/null; then
    "$PY" -m pip install -q -e . --no-deps >/dev/null 2>&1 || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
BUDGET=${GPU_CHECK_BUDGET:-420}
exec timeout $((BUDGET + 50)) "$PY" scripts/gpu_check.py --budget "$BUDGET" "$@"
