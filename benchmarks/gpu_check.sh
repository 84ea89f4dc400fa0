#!/usr/bin/env bash
# GPU checks for an H200-class machine in one run (< 5 minutes): 1024² encode+decode latency of the
# FLUX-size RGBA VAE in bf16 against the FLOP-count ideal (target <= 55 ms), and a training step
# (project vs reference-style). Results: benchmarks/results/<date>-<gpu>-gpu.{json,md}.
#
# The GPU machine has torch (2.11) but no diffusers and no network. Bring the wheels in .whl/ (ignored by
# git), downloaded beforehand on a machine with network access, for CPython 3.12 on manylinux x86_64:
#
#   pip download --dest .whl --only-binary=:all: --implementation cp --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       diffusers==0.42.1 pypng pillow
#
# (diffusers does not depend on torch, so no torch wheel is fetched.) The composite LPIPS term of the
# training step runs only if the `lpips` package is already importable there (it needs torchvision).
#
# Usage, from anywhere:   bash benchmarks/gpu_check.sh            (extra arguments go to gpu_check.py)
# Test on a CPU:          GPU_CHECK_TIMEOUT=1800 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --device cpu --quick
# (the run is killed after GPU_CHECK_TIMEOUT seconds, default 280, to stay within a 5-minute GPU slot)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import diffusers, png" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl diffusers==0.42.1 pypng pillow
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "${GPU_CHECK_TIMEOUT:-280}" "$PYTHON" -m benchmarks.gpu_check "$@"
