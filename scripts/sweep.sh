#!/usr/bin/env bash
# Sweep NFE x solver x schedule with Hydra multirun, then tabulate and plot the results store.
#
#   scripts/sweep.sh                      # embedded digits model, learned (LD3) vs hand-crafted, local
#   LAUNCHER=joblib scripts/sweep.sh      # parallel jobs on this machine (hydra-joblib-launcher)
#   LAUNCHER=submitit_slurm scripts/sweep.sh hydra.launcher.partition=gpu   # a SLURM cluster
#   LOGGER=wandb scripts/sweep.sh         # also log to Weights & Biases (wandb_offline: sync later)
#
# Extra arguments are passed to main.py as Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LAUNCHER=${LAUNCHER:-basic}
LOGGER=${LOGGER:-local}
SOLVERS=${SOLVERS:-ipndm,uni_pc,dpm_solver++}
STEPS=${STEPS:-4,6,8}
RESULTS=${RESULTS:-results/results.jsonl}

"$PY" main.py -m "hydra/launcher=$LAUNCHER" "logger=$LOGGER" "paths.results=$RESULTS" \
    "solver=$SOLVERS" "steps=$STEPS" "$@"
"$PY" scripts/report.py --results "$RESULTS" --out results/sweep
