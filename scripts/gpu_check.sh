#!/usr/bin/env bash
# The one-call GPU check (see bench/gpu_check.py): correctness of every GPU path against the CPU, the benchmarks
# side by side, and the zoo trained within its budget. Everything lands in --out (at most seven files).
#
#   scripts/gpu_check.sh --out gpu_check/             # on a machine with one NVIDIA GPU, about 8 minutes
#   scripts/gpu_check.sh --cpu-smoke --out /tmp/gc    # the same code on the CPU, tiny sizes, under 3 minutes
#
# Needs only torch, torchvision, timm, numpy, pillow, safetensors, scikit-learn and tqdm; runs from a checkout
# without installing PatchLens (PYTHONPATH is set to the checkout). PY picks the interpreter (default: python3).
# To carry timm 1.0.31 to a machine with an older one: pip download --no-deps timm==1.0.31 -d .whl
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
# Wheels carried in .whl/ (a package the GPU machine lacks, or timm older than 1.0.31 there: DINOv3 and SigLIP 2
# need it) are installed into a scratch folder that comes before the interpreter's own packages.
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$PWD:$site${PYTHONPATH#"$PWD"}"
fi
exec "$PY" bench/gpu_check.py "$@"
