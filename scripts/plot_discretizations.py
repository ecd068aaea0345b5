"""Plot time discretizations in lambda space (lambda = log(alpha / sigma), the half log-SNR) as a PNG.

Each schedule is drawn as lambda(t_i) against the normalized step index i / N, so grids of different
lengths share one axis. Schedules come from ``--kind`` specs (``kind`` or ``kind:key=value,key=value``)
and from ``--file`` (discretization JSON files or LD3 ``best_v2.pt`` checkpoints; their decoupled
network times are drawn as crosses when they differ).

Examples::

    .venv/bin/python scripts/plot_discretizations.py --schedule edm --nfe 10 \
        --kind time_uniform --kind logSNR --kind edm --kind edm:rho=3 --kind dmn --out results/edm10.png
    .venv/bin/python scripts/plot_discretizations.py --model analytic_gmm --nfe 6 --solver ipndm \
        --kind logSNR --kind gits --kind dmn --file runs/x/discretization.json
    .venv/bin/python scripts/plot_discretizations.py --schedule vp_discrete --sd-betas --nfe 10 --kind ays:model=sd15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ld3.discretizations import get_discretization, load  # noqa: E402
from ld3.schedules import NoiseSchedule, make_schedule  # noqa: E402


def parse_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``edm:rho=5,t_min=0.01`` -> ("edm", {"rho": 5, "t_min": 0.01}); values parsed as YAML scalars."""
    kind, _, rest = spec.partition(":")
    opts: Dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad option {item!r} in {spec!r}; expected key=value")
        opts[key.strip()] = yaml.safe_load(value)
    return kind.strip(), opts


def schedule_from_args(args) -> Tuple[NoiseSchedule, Any]:
    """The noise schedule (and the loaded zoo model, if ``--model`` was given)."""
    if args.model:
        from ld3.models.zoo import load_model

        opts = dict(parse_spec("x:" + ",".join(args.model_option))[1]) if args.model_option else {}
        model = load_model(args.model, **opts)
        return model.noise_schedule, model
    opts: Dict[str, Any] = {}
    if args.sd_betas:  # Stable Diffusion's scaled-linear betas (vp_discrete; its default is DDPM's linear betas)
        opts["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    if args.sigma_max is not None:  # edm
        opts["sigma_max"] = args.sigma_max
    return make_schedule(args.schedule, **opts), None


def collect(args, ns: NoiseSchedule, model) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, timesteps, model_timesteps) for every requested schedule."""
    out = []
    for spec in args.kind:
        kind, opts = parse_spec(spec)
        if kind.lower() == "gits" and "model_fn" not in opts:
            if model is None:
                raise SystemExit("the gits kind needs --model (a zoo model to compute teacher trajectories)")
            opts.setdefault("model_fn", model.model_fn())
            opts.setdefault("shape", tuple(model.shape))
            opts.setdefault("num_samples", args.gits_samples)
            opts.setdefault("dtype", torch.float64 if model.name == "analytic_gmm" else torch.float32)
        d = get_discretization(kind, ns, args.nfe, solver=args.solver, **opts)
        out.append((spec, d.timesteps, d.timesteps if d.model_timesteps is None else d.model_timesteps))
    for path in args.file:
        d = load(path)
        ts = ns.time_from_unit(d.timesteps, d.time_unit)
        mts = ts if d.model_timesteps is None else ns.time_from_unit(d.model_timesteps, d.time_unit)
        out.append((Path(path).name, ts, mts))
    return out


def plot(items, ns: NoiseSchedule, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, ts, mts in items:
        x = torch.linspace(0, 1, ts.numel())
        lam = ns.marginal_lambda(ts.detach(), check=False)
        (line,) = ax.plot(x, lam, marker="o", ms=4, label=f"{label} ({ts.numel() - 1} intervals)")
        if not torch.equal(mts, ts):
            ax.plot(x, ns.marginal_lambda(mts.detach(), check=False), "x", color=line.get_color(), ms=6)
    ax.set_xlabel("normalized step index i / N")
    ax.set_ylabel(r"$\lambda(t_i) = \log(\alpha_t / \sigma_t)$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description="Plot time discretizations in lambda space (PNG).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--schedule", default="vp_discrete", choices=["vp_discrete", "vp_linear", "vp_cosine", "edm"])
    src.add_argument("--model", help="zoo model id (its noise schedule; needed for gits)")
    p.add_argument("--model-option", action="append", default=[], help="loader option key=value (repeatable)")
    p.add_argument("--sd-betas", action="store_true", help="vp_discrete with Stable Diffusion's betas")
    p.add_argument("--sigma-max", type=float, default=None, help="EDM sigma_max (e.g. 700 for SVD)")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--solver", default=None, help="solver name: its NFE decides the grid length")
    p.add_argument("--kind", action="append", default=[], help="kind or kind:key=value,... (repeatable)")
    p.add_argument("--file", action="append", default=[], help="discretization .json or LD3 .pt (repeatable)")
    p.add_argument("--gits-samples", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("results/discretizations.png"))
    args = p.parse_args(argv)
    if not args.kind and not args.file:
        args.kind = ["time_uniform", "time_quadratic", "logSNR", "edm"]
    ns, model = schedule_from_args(args)
    items = collect(args, ns, model)
    title = f"{args.model or ns.kind}, NFE {args.nfe}" + (f", {args.solver}" if args.solver else "")
    plot(items, ns, args.out, title)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
