#!/usr/bin/env python
"""Per-step solver overhead (time outside the network) of ld3's solvers versus diffusers' schedulers.

The network is a null model that returns a preallocated tensor, so all measured time is solver
arithmetic and Python overhead. For each pair, in the same run, on the same device, batch and NFE:

* ours: one ``solver.sample(null, x_T, timesteps)`` call, including grid validation (its host syncs)
  and the precomputation of all coefficients;
* diffusers: the usual sampling loop ``scale_model_input`` + ``step`` over the scheduler's timesteps.
  Schedulers are stateful, so ``set_timesteps`` runs before every loop; its time is measured
  separately and subtracted (which favours diffusers: our grid precomputation is counted).

Both run under ``torch.no_grad()``. On CPU the clock is the thread's CPU time (``time.thread_time``,
one intra-op thread), on CUDA wall time with synchronization. Times are the best of ``--repeats``
runs after a warm-up, ours and diffusers' interleaved round-robin so both see the same machine load,
divided by the NFE (time per network call). The ratio column is ours / diffusers (target <= 0.5).

Pairs: ddim/DDIMScheduler, euler/EulerDiscreteScheduler, heun/HeunDiscreteScheduler (NFE 2N-1 on
both sides), ipndm/IPNDMScheduler, dpm_solver++/DPMSolverMultistepScheduler,
uni_pc/UniPCMultistepScheduler, deis/DEISMultistepScheduler; pfdiff has no diffusers counterpart
and is listed alone.

Usage::

    python benchmarks/solver_overhead.py                       # CPU, 1 thread, batch 1 and 64, NFE 10
    python benchmarks/solver_overhead.py --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this checkout's ld3, not an installed one

from ld3.cli import apply_threads, threads_arg  # noqa: E402
from ld3.discretizations import get_timesteps  # noqa: E402
from ld3.schedules import NoiseScheduleVP, ddpm_linear_betas  # noqa: E402
from ld3.solvers import get_solver  # noqa: E402
from ld3.utils import resolve_device  # noqa: E402
from ld3.utils.io import atomic_write_text  # noqa: E402

PAIRS = (
    ("ddim", {}, "DDIMScheduler", {}),
    ("euler", {}, "EulerDiscreteScheduler", {}),
    ("heun", {}, "HeunDiscreteScheduler", {}),
    ("ipndm", {}, "IPNDMScheduler", {}),
    ("dpm_solver++", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("uni_pc", {}, "UniPCMultistepScheduler", {"solver_order": 2}),
    ("deis", {}, "DEISMultistepScheduler", {"solver_order": 3}),
    ("pfdiff", {}, None, {}),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cpu":
        # CPU time of this thread: immune to being descheduled on a shared machine (1 intra-op thread)
        t0 = time.thread_time()
        fn()
        return time.thread_time() - t0
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def timed_interleaved(fns: List[Callable[[], None]], device: torch.device, repeats: int) -> List[float]:
    """Best-of-``repeats`` time of each function, run round-robin so all see the same machine load."""
    for fn in fns:
        fn()
        fn()
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            best[k] = min(best[k], _once(fn, device))
    return best


def diffusers_runner(cls_name: str, kwargs: dict, steps: int, x: torch.Tensor, out: torch.Tensor):
    import diffusers

    cls = getattr(diffusers, cls_name)
    if cls_name == "IPNDMScheduler":
        sched = cls(num_train_timesteps=1000)
    else:
        sched = cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2, **kwargs)

    def prepare():
        sched.set_timesteps(steps, device=x.device)
        return list(sched.timesteps)

    def loop(timesteps):
        sample = x
        for t in timesteps:
            inp = sched.scale_model_input(sample, t)
            del inp  # the null network ignores its input
            sample = sched.step(out, t, sample).prev_sample
        return sample

    return prepare, loop


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=threads_arg, default=1)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.threads != 1 and args.device == "cpu":
        raise ValueError(f"--threads={args.threads}: CPU timing uses the thread's CPU time, so it needs --threads 1")
    device = resolve_device(args.device)
    ns = NoiseScheduleVP("discrete", betas=ddpm_linear_betas())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    lines = [
        "# Solver overhead per network call (null model)",
        "",
        f"Command: `python benchmarks/solver_overhead.py --device {args.device} --batches "
        f"{' '.join(map(str, args.batches))} --nfe {args.nfe} --repeats {args.repeats} --threads {args.threads}`",
        "",
        f"Device: {name}; x of shape (B, 3, 32, 32) float32; NFE {args.nfe} (heun: {args.nfe - 1}, odd); "
        f"best of {args.repeats} interleaved runs; microseconds per network call.",
        "",
        "| solver | diffusers scheduler | batch | ours (us/call) | diffusers (us/call) | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for batch in args.batches:
        x = torch.randn(batch, 3, 32, 32, device=device)
        out = torch.randn_like(x)

        def null(x_, t_, out=out):
            return out

        for solver_name, opts, cls_name, kw in PAIRS:
            solver = get_solver(solver_name, ns, **opts)
            nfe = args.nfe
            try:
                solver.num_timesteps(nfe)
            except ValueError:
                nfe = args.nfe - 1
            ts = get_timesteps("logSNR", ns, nfe, solver=solver).to(device)
            with torch.no_grad():
                fns = [lambda solver=solver, ts=ts, null=null, x=x: solver.sample(null, x, ts)]
                if cls_name is not None:
                    steps = (nfe + 1) // 2 if solver_name == "heun" else nfe
                    prepare, loop = diffusers_runner(cls_name, kw, steps, x, out)
                    calls = len(prepare())
                    assert calls == nfe, (cls_name, calls, nfe)
                    # schedulers keep state (step index, history): set_timesteps must precede each loop;
                    # its own time is subtracted
                    fns += [lambda loop=loop, prepare=prepare: loop(prepare()), prepare]
                best = timed_interleaved(fns, device, args.repeats)
                ours = best[0] / nfe
                theirs = (best[1] - best[2]) / calls if cls_name is not None else None
            ratio = f"{ours / theirs:.2f}" if theirs else "-"
            lines.append(
                f"| {solver_name} | {cls_name or '-'} | {batch} | {ours * 1e6:.1f} | "
                f"{f'{theirs * 1e6:.1f}' if theirs else '-'} | {ratio} |"
            )
            print(lines[-1], flush=True)
    md = "\n".join(lines) + "\n"
    path = Path(args.out) / f"solver_overhead_{device.type}.md"
    atomic_write_text(path, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
