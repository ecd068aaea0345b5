#!/usr/bin/env python
"""Quality numbers and the sample grid of the embedded ``digits`` model (docs/model_card.md).

* Teacher: ``--teacher-steps`` (100) steps of the first available of dpm_solver++ / uni_pc / ddim
  (``--solver`` to choose) on the ``--discretization`` grid (time_uniform).
* Classifier-free guided samples, ``--n-per-class`` per digit: the share the feature network
  classifies as the intended digit (overall and per class), and the Frechet distance between their
  feature-network features and the validation set's, next to the train-vs-validation distance (the
  floor: two finite samples of the same distribution).
* The same for unconditional (null-class) samples and, with fewer samples, classifier guidance.
* Few-step rows (``--nfe``, default 5 and 10): what a fast sampler loses against the teacher.
* ``docs/images/digits_samples.png``: one row per digit (0..9) of guided teacher samples;
  ``docs/images/digits_real.png``: validation images in the same layout, for comparison.

Usage::

    python scripts/evaluate_embedded.py                       # writes docs/images/*.png and a JSON
    python scripts/evaluate_embedded.py --n-per-class 20 --no-images --json-out /tmp/eval.json
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from tqdm import tqdm

from ld3.cli import apply_threads, threads_arg
from ld3.discretizations import get_timesteps
from ld3.metrics.frechet import feature_statistics, frechet_distance
from ld3.models.digits_data import digits_split
from ld3.models.zoo import LoadedModel, load_model
from ld3.solvers import available as available_solvers
from ld3.solvers import get_solver
from ld3.utils import atomic_write_bytes, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
TEACHER_PREFERENCE = ("dpm_solver++", "uni_pc", "ddim")
TEACHER_OPTIONS = {"dpm_solver++": {"order": 2}, "uni_pc": {}, "ddim": {}}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights-dir", default=None, help="digits weights (default: the package assets)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_arg, default=1, help="torch threads (1 is robust on a shared machine)")
    p.add_argument("--solver", default=None, help=f"teacher solver (default: first of {TEACHER_PREFERENCE})")
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--discretization", default="time_uniform")
    p.add_argument("--nfe", type=int, nargs="*", default=[5, 10], help="few-step rows (same solver)")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--n-classifier-per-class", type=int, default=20, help="classifier-guidance samples per class")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--classifier-scale", type=float, default=None, help="classifier-guidance scale")
    p.add_argument("--cfg-sweep", type=float, nargs="*", default=[], help="extra CFG scales (teacher rows)")
    p.add_argument("--skip-uncond", action="store_true", help="skip the unconditional row")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-out", type=Path, default=REPO / "docs" / "images" / "digits_samples.png")
    p.add_argument("--real-grid-out", type=Path, default=REPO / "docs" / "images" / "digits_real.png")
    p.add_argument("--no-images", action="store_true")
    p.add_argument("--json-out", type=Path, default=REPO / "docs" / "images" / "digits_eval.json")
    args = p.parse_args(argv)
    for name in ("teacher_steps", "n_per_class", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def pick_solver(name: str | None) -> str:
    names = available_solvers()
    if name is not None:
        if name not in names:
            raise ValueError(f"solver {name!r} is not available; available: {names}")
        return name
    for cand in TEACHER_PREFERENCE:
        if cand in names:
            return cand
    raise ValueError(f"none of {TEACHER_PREFERENCE} is registered in ld3.solvers (available: {names})")


def sample(
    model: LoadedModel, solver_name: str, nfe: int, labels: torch.Tensor, guidance: str, scale: float,
    discretization: str, seed: int, batch_size: int, device: torch.device, desc: str,
) -> torch.Tensor:
    """Samples for ``labels`` (one x_T per label from ``seed``), in [-1, 1] on the CPU."""
    ns = model.noise_schedule
    solver = get_solver(solver_name, ns, **TEACHER_OPTIONS.get(solver_name, {}))
    ts = get_timesteps(discretization, ns, nfe, solver=solver)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x_T = torch.randn((labels.numel(),) + tuple(model.shape), generator=g)
    out = []
    for i in tqdm(range(0, labels.numel(), batch_size), desc=desc, leave=False):
        y = labels[i : i + batch_size].to(device)
        null = torch.full_like(y, model.null_class)
        if guidance == "uncond":
            fn = model.model_fn("uncond", condition=null)
        elif guidance == "classifier":
            fn = model.model_fn("classifier", scale, condition=y, unconditional_condition=null)
        else:
            fn = model.model_fn("classifier-free", scale, condition=y, unconditional_condition=null)
        xb = x_T[i : i + batch_size].to(device)
        if guidance == "classifier":  # needs grad of the classifier w.r.t. x inside model_fn
            x0 = solver.sample(fn, xb, ts)
        else:
            with torch.no_grad():
                x0 = solver.sample(fn, xb, ts)
        out.append(x0.detach().clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def features_and_predictions(model: LoadedModel, x: torch.Tensor, device: torch.device):
    f, p = [], []
    for i in range(0, x.shape[0], 1000):
        xb = x[i : i + 1000].to(device)
        f.append(model.feature_fn(xb).double().cpu())
        p.append(model.feature_fn.logits(xb).argmax(-1).cpu())
    return torch.cat(f), torch.cat(p)


def quality(model, x, labels, val_stats, device) -> Dict[str, Any]:
    f, pred = features_and_predictions(model, x, device)
    out: Dict[str, Any] = {"n": int(x.shape[0]), "fd_vs_val": frechet_distance(*feature_statistics(f), *val_stats)}
    if labels is not None:
        ok = (pred == labels).float()
        out["accuracy"] = ok.mean().item()
        out["per_class_accuracy"] = [ok[labels == c].mean().item() for c in range(model.num_classes)]
    return out


def png_grid(images: torch.Tensor, nrow: int, scale: int = 4, pad: int = 2) -> bytes:
    """Images (N, 1, H, W) in [-1, 1] -> PNG bytes of a grid with ``nrow`` images per row (white ink)."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=np.uint8)
    pix = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = pix[i]
    img = Image.fromarray(canvas, mode="L").resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def first_per_class(x: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    return torch.cat([x[labels == c][:k] for c in range(num_classes)])


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    args = parse_args(argv)
    apply_threads(args.threads)
    opts: Dict[str, Any] = {"device": args.device}
    if args.weights_dir:
        opts["weights_dir"] = args.weights_dir
    model = load_model("digits", **opts)
    device = torch.device(model.metadata["device"])
    cfg_scale = model.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    clf_scale = (model.metadata["suggested_guidance_scales"]["classifier"] if args.classifier_scale is None
                 else args.classifier_scale)
    solver_name = pick_solver(args.solver)
    split_seed = model.metadata["data"].get("split_seed", 0)
    x_tr, _ = digits_split("train", 16, seed=split_seed)
    x_va, y_va = digits_split("val", 16, seed=split_seed)
    f_va, pred_va = features_and_predictions(model, x_va, device)
    f_tr, _ = features_and_predictions(model, x_tr, device)
    val_stats = feature_statistics(f_va)
    K = model.num_classes
    labels = torch.arange(K).repeat_interleave(args.n_per_class)
    common = dict(discretization=args.discretization, batch_size=args.batch_size, device=device)

    results: Dict[str, Any] = {
        "teacher": {"solver": solver_name, "options": TEACHER_OPTIONS.get(solver_name, {}),
                    "steps": args.teacher_steps, "discretization": args.discretization},
        "guidance_scales": {"classifier-free": cfg_scale, "classifier": clf_scale},
        "floor": {"fd_train_vs_val": frechet_distance(*feature_statistics(f_tr), *val_stats),
                  "n_train": int(x_tr.shape[0]), "n_val": int(x_va.shape[0]),
                  "feature_net_val_accuracy": (pred_va == y_va).float().mean().item()},
        "rows": [],
    }
    t0 = time.perf_counter()
    x_cfg = sample(model, solver_name, args.teacher_steps, labels, "classifier-free", cfg_scale,
                   seed=args.seed, desc="teacher CFG", **common)
    results["rows"].append({"guidance": "classifier-free", "scale": cfg_scale, "nfe": args.teacher_steps,
                            **quality(model, x_cfg, labels, val_stats, device)})
    for w in args.cfg_sweep:
        x_w = sample(model, solver_name, args.teacher_steps, labels, "classifier-free", w,
                     seed=args.seed, desc=f"teacher CFG {w:g}", **common)
        results["rows"].append({"guidance": "classifier-free", "scale": w, "nfe": args.teacher_steps,
                                **quality(model, x_w, labels, val_stats, device)})
    if not args.skip_uncond:
        x_unc = sample(model, solver_name, args.teacher_steps, labels, "uncond", 1.0, seed=args.seed,
                       desc="teacher uncond", **common)
        results["rows"].append({"guidance": "uncond", "scale": 1.0, "nfe": args.teacher_steps,
                                **quality(model, x_unc, None, val_stats, device)})
    if args.n_classifier_per_class > 0:
        lab_c = torch.arange(K).repeat_interleave(args.n_classifier_per_class)
        x_clf = sample(model, solver_name, args.teacher_steps, lab_c, "classifier", clf_scale, seed=args.seed,
                       desc="teacher classifier", **common)
        results["rows"].append({"guidance": "classifier", "scale": clf_scale, "nfe": args.teacher_steps,
                                **quality(model, x_clf, lab_c, val_stats, device)})
    for nfe in args.nfe:
        x_few = sample(model, solver_name, nfe, labels, "classifier-free", cfg_scale, seed=args.seed,
                       desc=f"NFE {nfe} CFG", **common)
        row = {"guidance": "classifier-free", "scale": cfg_scale, "nfe": nfe,
               **quality(model, x_few, labels, val_stats, device)}
        row["rmse_vs_teacher"] = (x_few - x_cfg).pow(2).mean().sqrt().item()
        results["rows"].append(row)
    results["eval_seconds"] = time.perf_counter() - t0

    if not args.no_images:
        grid = first_per_class(x_cfg, labels, 10, K)
        atomic_write_bytes(args.grid_out, png_grid(grid, nrow=10))
        atomic_write_bytes(args.real_grid_out, png_grid(first_per_class(x_va, y_va, 10, K), nrow=10))
        results["images"] = [str(args.grid_out), str(args.real_grid_out)]
    if args.json_out:
        atomic_write_json(args.json_out, results)
    print(markdown(results))
    return results


def markdown(res: Dict[str, Any]) -> str:
    t = res["teacher"]
    lines = [
        f"teacher: {t['solver']} {t['options']} on {t['discretization']}; "
        f"FD floor (train {res['floor']['n_train']} vs val {res['floor']['n_val']}): "
        f"{res['floor']['fd_train_vs_val']:.3f}; "
        f"feature-net val accuracy {res['floor']['feature_net_val_accuracy']:.3f}",
        "",
        "| guidance | scale | NFE | n | accuracy | FD vs val | RMSE vs teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        rm = f"{r['rmse_vs_teacher']:.4f}" if "rmse_vs_teacher" in r else "-"
        lines.append(
            f"| {r['guidance']} | {r['scale']:g} | {r['nfe']} | {r['n']} | {acc} | {r['fd_vs_val']:.3f} | {rm} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
