#!/usr/bin/env bash
# Reproduce the LD3 paper's CIFAR-10 table (iPNDM and UniPC, NFE 4/6/8/10; FID on 50k samples).
# Needs the EDM checkpoint, NVIDIA's EDM source tree and the FID reference statistics:
#   scripts/download_model.sh edm fid-refs inception lpips && export EDM_REPO=/path/to/NVlabs/edm
# Published numbers to compare with are in docs/results.md (from the LD3 paper).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for solver in ipndm uni_pc; do
  "$PY" gen_data.py model=edm_cifar10 solver=uni_pc steps=20 discretization=logSNR total_samples=100 "$@"
  "$PY" main.py -m model=edm_cifar10 solver=$solver steps=4,6,8,10 loss=lpips_vgg "$@"
done
"$PY" scripts/report.py --out results/cifar10
