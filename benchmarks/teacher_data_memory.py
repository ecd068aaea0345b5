"""Peak host memory of teacher-data generation with and without ``low_gpu`` (CPU; not a CI test).

Each mode runs in a fresh subprocess: a random 3-conv noise predictor on 3x32x32 "images" (64
channels), DDIM, and the peak resident set size (``ru_maxrss``) growth during generation is
reported. ``low_gpu`` integrates sub-batches of ``low_gpu_chunk`` samples, so the activation peak
follows the chunk instead of ``sampling_batch_size``. On CUDA the same mechanism bounds
``torch.cuda.max_memory_allocated``.

    python benchmarks/teacher_data_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, tempfile, torch
torch.set_num_threads(1)
from ld3.data import generate_teacher_data
from ld3.models.zoo import LoadedModel
from ld3.schedules import ddpm_linear_betas, make_schedule

class Net(torch.nn.Module):
    def __init__(self, w=64):
        super().__init__()
        self.c1, self.c2, self.c3 = (torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.Conv2d(w, w, 3, padding=1),
                                     torch.nn.Conv2d(w, 3, 3, padding=1))
    def forward(self, x, t, cond=None):
        return 0.1 * torch.tanh(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))

ns = make_schedule("vp_discrete", betas=ddpm_linear_betas())
model = LoadedModel(name="mem_net", noise_schedule=ns, network=Net(), model_type="noise", shape=(3, 32, 32))
opts = json.loads(sys.argv[1])
with torch.no_grad():
    model.network(torch.zeros(2, 3, 32, 32), torch.zeros(2))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = dict(model={"name": "mem_net", "options": {}}, solver={"name": "ddim", "options": {}},
           discretization={"kind": "logSNR", "options": {}}, steps=3, total_samples=128, sampling_batch_size=128,
           shard_size=128, out_dir=tempfile.mkdtemp(), progress=False, device="cpu", **opts)
generate_teacher_data(cfg, model=model)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mib": (peak - base) / 1024}))
"""

MODES = {
    "batch 128": {"batch_invariant": False},
    "batch 128, low_gpu chunk 16": {"batch_invariant": False, "low_gpu": True, "low_gpu_chunk": 16},
    "batch 128, low_gpu chunk 1": {"batch_invariant": False, "low_gpu": True, "low_gpu_chunk": 1},
    "batch-invariant (block 16)": {"batch_invariant": True},
}


def main() -> None:
    print("| mode | peak RSS growth (MiB) |\n|---|---|")
    for name, opts in MODES.items():
        with tempfile.TemporaryDirectory():
            p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-2000:])
        res = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"| {name} | {res['peak_growth_mib']:.0f} |")


if __name__ == "__main__":
    main()
