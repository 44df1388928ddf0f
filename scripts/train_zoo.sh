#!/usr/bin/env bash
# Train PatchLens's five bundled encoders on the parts world, one after another, into assets/models.
#
# CPU budget (no GPU here): about 20 minutes each at ONE torch thread, one run at a time, because the 2-core
# machine is shared. Step counts come from speeds measured at batch 64, 1 thread, on the 2-core AMD EPYC while
# other jobs ran: supervised 3.7 s/step, dino ~15, mae 1.5, cae 3.6, dilemma 7.8 (DINO gets ~35 min, the others ~20).
# DINO uses the short-run recipe of ssl_core/train/dino.py (`DINORecipe`; measured in docs/benchmarks.md, "DINO
# recipe"). On a GPU, retrain with e.g. `patchlens train --method dino --steps 20000 --batch-size 256`, or run the
# GPU kit (scripts/gpu_check.sh), which trains all five within a 5-minute budget.
#
# `python -m app.cli.train train ...` is `patchlens train ...` (it also works before app.cli.train is listed in
# app.cli.main.COMMAND_MODULES); each model card records the equivalent `patchlens train` command.
#
# Run in the background, detached:  setsid nohup nice -n 5 scripts/train_zoo.sh >> runs/train_zoo.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
mkdir -p runs

train() {  # name method steps; a model whose weights exist is skipped, so an interrupted run can resume
  if [ -f "assets/models/$1.safetensors" ]; then echo "$(date -Is) skip  $1 (weights exist)"; return; fi
  echo "$(date -Is) start $1 ($2, $3 steps)"
  if nice -n 5 "$PY" -m app.cli.train train --method "$2" --out assets/models --steps "$3" --batch-size 64 \
      --seed 0 --threads 1 --name "$1" > "runs/$1.log" 2>&1; then
    echo "$(date -Is) done  $1"
  else
    echo "$(date -Is) FAILED $1 (see runs/$1.log)"
  fi
}

train patchlens-sup supervised 320
train patchlens-mae mae 800
train patchlens-cae cae 330
train patchlens-dino dino 150
train patchlens-dilemma dilemma 155
