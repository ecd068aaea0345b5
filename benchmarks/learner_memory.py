"""Peak memory of one LD3 training step with and without ``low_gpu`` (torch.utils.checkpoint per network call).

For each setting a fresh subprocess builds the model and the learner, then runs one training forward +
backward through the solver (NFE 10 by default) and reports:

* ``saved``: bytes of the tensors autograd keeps for the backward pass (counted exactly with
  ``torch.autograd.graph.saved_tensors_hooks``, shared storages once): what grows with NFE x activations;
* ``peak``: on CUDA ``torch.cuda.max_memory_allocated`` during the step; on CPU the growth of the
  process's peak resident set size (``ru_maxrss``) over the step (coarser: includes allocator slack);
* the wall time of the step (checkpointing recomputes each network call once in the backward pass).

    python benchmarks/learner_memory.py                       # digits, uni_pc, NFE 10, batch 2 and 16
    python benchmarks/learner_memory.py --model analytic_gmm --nfe 10 --batch 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ld3.cli import apply_threads, threads_arg

REPO = Path(__file__).resolve().parents[1]


def measure(model: str, solver: str, nfe: int, batch: int, low_gpu: bool, device: str, weights: str | None) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from ld3.learners import LD3Config, LD3Data, LD3Trainer, get_loss
    from ld3.models.zoo import load_model
    from ld3.solvers import get_solver
    from ld3.utils import resolve_device

    dev = resolve_device(device)
    opts = {"weights_dir": weights, "device": str(dev)} if (model == "digits" and weights) else (
        {"device": str(dev)} if model == "digits" else {})
    m = load_model(model, **opts)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(batch, *m.shape, generator=g)
    tgt = torch.zeros(batch, *m.shape)
    cond = (torch.arange(batch) % m.num_classes) if (model == "digits") else None
    unc = torch.full_like(cond, m.null_class) if cond is not None else None
    data = LD3Data(lat, tgt, cond, unc)
    cfg = LD3Config(num_train=batch, num_valid=0, main_train_batch_size=batch, main_valid_batch_size=batch,
                    low_gpu=low_gpu)
    kw = {} if model != "digits" else {"guidance_type": "classifier-free", "guidance_scale": 2.0}

    def make(c, u):
        return m.model_fn(condition=None if c is None else c.to(dev),
                          unconditional_condition=None if u is None else u.to(dev), **kw)

    tr = LD3Trainer(cfg, get_solver(solver, m.noise_schedule), nfe, make, get_loss("l2"), data, device=dev)
    idx = torch.arange(batch)

    def step(count_saved: bool, sub: torch.Tensor = idx) -> int:
        seen, total = set(), [0]

        def pack(t):
            if count_saved:
                key = (t.untyped_storage().data_ptr(), t.device.type)
                if key not in seen:
                    seen.add(key)
                    total[0] += t.untyped_storage().nbytes()
            return t

        tr.param.params1.requires_grad_(True)
        tr.param.params2.requires_grad_(True)
        lat_p = tr.latents_train[sub].clone().to(dev).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            t1, t2 = tr.timesteps()
            loss = tr.loss_vector(tr.train_data, lat_p, sub, t1, t2).mean()
        loss.backward()
        tr.param.params1.grad = None
        tr.param.params2.grad = None
        return total[0]

    step(False, idx[:1])  # warm-up on one sample (lazy init) without raising the peak of the real step
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    saved = step(True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
        how = "ru_maxrss growth"
    return {"model": model, "solver": solver, "nfe": nfe, "batch": batch, "low_gpu": low_gpu, "device": str(dev),
            "saved_bytes": saved, "peak_bytes": peak, "peak_how": how, "step_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--solver", default="uni_pc")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--batch", default="2,16")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default=None, help="digits weights_dir (default: ld3/assets)")
    p.add_argument("--threads", type=threads_arg, default="auto")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        apply_threads(a.threads)
        spec = json.loads(a.child)
        print("RESULT " + json.dumps(measure(**spec)))
        return
    rows = []
    for b in [int(x) for x in a.batch.split(",")]:
        for low in (False, True):
            spec = dict(model=a.model, solver=a.solver, nfe=a.nfe, batch=b, low_gpu=low, device=a.device,
                        weights=a.weights)
            out = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child", json.dumps(spec)],
                                 capture_output=True, text=True, cwd=str(REPO))
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                raise SystemExit(f"measurement failed for {spec}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
    mib = 1024 * 1024
    print(f"\nLD3 training step memory: model {a.model}, solver {a.solver}, NFE {a.nfe}, device {rows[0]['device']} "
          f"(peak = {rows[0]['peak_how']})\n")
    print("| batch | low_gpu | autograd saved (MiB) | peak (MiB) | step (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['low_gpu']} | {r['saved_bytes'] / mib:.2f} | {r['peak_bytes'] / mib:.1f} | "
              f"{r['step_s']:.2f} |")
    for b in sorted({r["batch"] for r in rows}):
        off = next(r for r in rows if r["batch"] == b and not r["low_gpu"])
        on = next(r for r in rows if r["batch"] == b and r["low_gpu"])
        print(f"batch {b}: low_gpu keeps {on['saved_bytes'] / max(off['saved_bytes'], 1):.1%} of the saved tensors, "
              f"step time x{on['step_s'] / max(off['step_s'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
