#!/usr/bin/env python
"""Wall time of sampling the embedded ``digits`` model on CPU: 256 images at NFE 10 (target < 5 s).

Rows (same network, same x_T, same NFE, one run each after a warm-up; median of ``--repeats``):

* ``ld3 <solver> CFG``: classifier-free guidance at the model's default scale (the default use; the
  guided network call evaluates a doubled batch of 512);
* ``ld3 <solver> uncond``: null-class sampling (a batch of 256);
* ``diffusers DPMSolverMultistep CFG``: the peer -- diffusers' scheduler (DPM-Solver++ 2M, the same
  DDPM betas, 10 steps) driving the same network and guidance; the ratio column is time / this row;
* ``ld3 <solver> CFG, batch 1 x 256``: the same work without batching (``--batch1``), to show what
  batching buys.

The load average at start and end is printed, and each row's CPU seconds: on a shared machine other
processes inflate times, and with 2 OpenMP threads on 2 busy cores much more than with 1 (measured at
load average ~4: 18.7 s with 2 threads vs 6.3 s with 1; on a quiet machine 2.7 s vs 3.8 s). Use
``--threads 1`` when the cores are shared.

Usage::

    python benchmarks/embedded_sampling.py            # 2 threads, 256 images, NFE 10
    python benchmarks/embedded_sampling.py --batch1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

import torch

from ld3.cli import apply_threads, threads_arg
from ld3.discretizations import get_timesteps
from ld3.models.zoo import load_model
from ld3.solvers import get_solver


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> Dict[str, float]:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    ts, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # cpu_s: CPU seconds of this process (all threads); cpu_s / wall << threads means others held the cores
    return {"median_s": statistics.median(ts), "min_s": min(ts), "cpu_s": statistics.median(cpu)}


def main(argv: List[str] | None = None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--solver", default="dpm_solver++")
    p.add_argument("--discretization", default="time_uniform")
    p.add_argument("--threads", type=threads_arg, default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch1", action="store_true", help="also time 256 separate batch-1 runs")
    p.add_argument("--no-peer", action="store_true", help="skip the diffusers row")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    load0 = os.getloadavg()[0]

    m = load_model("digits", device="cpu")
    ns = m.noise_schedule
    solver = get_solver(args.solver, ns)
    ts = get_timesteps(args.discretization, ns, args.nfe, solver=solver)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((args.n,) + tuple(m.shape), generator=g)
    y = torch.arange(args.n) % m.num_classes
    null = torch.full_like(y, m.null_class)
    scale = m.default_guidance_scale
    cfg = m.model_fn("classifier-free", scale, condition=y, unconditional_condition=null)
    unc = m.model_fn("uncond", condition=null)

    rows = []

    @torch.no_grad()
    def run_cfg() -> torch.Tensor:
        return solver.sample(cfg, x_T, ts)

    @torch.no_grad()
    def run_unc() -> torch.Tensor:
        return solver.sample(unc, x_T, ts)

    ref = run_cfg()
    rows.append({"name": f"ld3 {args.solver} CFG (w={scale:g}), batch {args.n}", **timed(run_cfg, args.repeats)})
    rows.append({"name": f"ld3 {args.solver} uncond, batch {args.n}", **timed(run_unc, args.repeats)})

    peer = None
    if not args.no_peer:
        from diffusers import DPMSolverMultistepScheduler

        sched = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear",
            algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace",
        )
        net = m.network

        @torch.no_grad()
        def run_peer() -> torch.Tensor:
            sched.set_timesteps(args.nfe)
            x = x_T.clone()
            for t in sched.timesteps:
                tt = torch.full((2 * args.n,), float(t))
                e_u, e_c = net(torch.cat([x, x]), tt, torch.cat([null, y])).chunk(2)
                x = sched.step(e_u + scale * (e_c - e_u), t, x).prev_sample
            return x

        peer = {"name": f"diffusers DPMSolverMultistep CFG (w={scale:g}), batch {args.n}",
                **timed(run_peer, args.repeats)}
        rows.append(peer)

    if args.batch1:
        @torch.no_grad()
        def run_b1() -> torch.Tensor:
            out = []
            for i in range(args.n):
                yi, ni = y[i : i + 1], null[i : i + 1]
                f = m.model_fn("classifier-free", scale, condition=yi, unconditional_condition=ni)
                out.append(solver.sample(f, x_T[i : i + 1], ts))
            return torch.cat(out)

        rows.append({"name": f"ld3 {args.solver} CFG, batch 1 x {args.n}", **timed(run_b1, max(1, args.repeats // 3))})

    base = peer["median_s"] if peer else rows[0]["median_s"]
    print(f"digits model, {args.n} images, NFE {args.nfe}, {args.discretization} grid, torch threads "
          f"{torch.get_num_threads()}, load average {load0:.2f} -> {os.getloadavg()[0]:.2f} "
          f"(cpus: {os.cpu_count()})")
    print(f"ld3 output finite: {bool(torch.isfinite(ref).all())}")
    print()
    print(f"| run | median s | min s | CPU s (median) | ratio to {'peer' if peer else 'first row'} |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["median_s"] / base
        print(f"| {r['name']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_s']:.3f} | {r['ratio']:.2f} |")
    target = rows[0]["median_s"]
    print(f"\ntarget < 5 s for {args.n} images at NFE {args.nfe} (CFG): {'met' if target < 5 else 'NOT met'} "
          f"({target:.2f} s)")
    return rows


if __name__ == "__main__":
    main()
