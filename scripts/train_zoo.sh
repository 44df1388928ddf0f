#!/usr/bin/env bash
# Train PatchLens's five bundled encoders on the parts world, one after another, into assets/models.
#
# CPU budget (no GPU here): 20 to 40 minutes each (DINO and DILEMMA 90) at ONE torch thread on the 2-core AMD EPYC. Step counts come from
# speeds measured at 1 thread while other jobs ran: at batch 64, supervised 3.7 s/step, mae 1.5, cae 3.6; at batch
# 32, dino and dilemma ~3.5 (both use DINOv2's Sinkhorn-Knopp centring + KoLeo, `DINORecipe` in
# ssl_core/train/dino.py; measured in docs/benchmarks.md, "DINO recipe without masks"). On a GPU, retrain with e.g.
# `patchlens train --method dino --steps 20000 --batch-size 256 --overwrite`, or run the GPU kit (scripts/gpu_check.sh), which
# trains all five within its budget.
#
# `python -m app.cli.train train ...` is `patchlens train ...` (it also works before app.cli.train is listed in
# app.cli.main.COMMAND_MODULES); each model card records the equivalent `patchlens train` command.
#
# Run in the background, detached:  setsid nohup nice -n 5 scripts/train_zoo.sh >> runs/train_zoo.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}  # the README's venv
mkdir -p runs

train() {  # name method steps batch [max-seconds]; a model whose weights exist is skipped, so an interrupted run can resume
  if [ -f "assets/models/$1.safetensors" ]; then echo "$(date -Is) skip  $1 (weights exist)"; return; fi
  echo "$(date -Is) start $1 ($2, $3 steps of $4)"
  if nice -n 5 "$PY" -m app.cli.train train --method "$2" --out assets/models --steps "$3" --batch-size "$4" \
      --seed 0 --threads 1 --name "$1" ${5:+--max-seconds "$5"} > "runs/$1.log" 2>&1; then
    echo "$(date -Is) done  $1"
  else
    echo "$(date -Is) FAILED $1 (see runs/$1.log)"
  fi
}

train patchlens-sup supervised 320 64
train patchlens-mae mae 800 64
train patchlens-cae cae 330 64   # 2,200 steps reconstruct better but probe no better (docs/benchmarks.md, eighth session)
train patchlens-dino dino 1600 32 5400      # 90 min at 3.4 s/step; positions start from 2D sin-cos (ssl_core/train/dino.py)
train patchlens-dilemma dilemma 1600 32 5400   # positions start from 2D sin-cos (ssl_core/train/dilemma.py)
