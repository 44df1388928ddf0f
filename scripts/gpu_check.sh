#!/usr/bin/env bash
# The one-call GPU check (see bench/gpu_check.py): correctness of every GPU path against the CPU, the benchmarks
# side by side, and the zoo trained within its budget. Everything lands in --out (at most three files).
#
#   scripts/gpu_check.sh --out gpu_check/             # on a machine with one NVIDIA GPU, about 8 minutes
#   scripts/gpu_check.sh --cpu-smoke --out /tmp/gc    # the same code on the CPU, tiny sizes, under 3 minutes
#
# Needs only torch, torchvision, timm, numpy, pillow, safetensors, scikit-learn and tqdm; runs from a checkout
# without installing PatchLens (PYTHONPATH is set to the checkout). PY picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PY:-python3}" bench/gpu_check.py "$@"
