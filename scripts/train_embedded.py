#!/usr/bin/env python
"""Train the embedded ``digits`` model (issue 5) reproducibly from a seed, on CPU in minutes.

Trains three networks on scikit-learn's digits (16 x 16, [-1, 1], fixed stratified split; see
:mod:`ld3.models.digits_data`) and writes them as safetensors plus a manifest with sha256 checksums:

1. ``DigitsUNet`` denoiser: noise prediction (Ho et al. 2020, Eq. 14 "L_simple") on the discrete VP
   schedule with 1000 DDPM linear betas; network time k in 0..999 (= ``model_time_input`` of
   t = (k + 1) / 1000); class labels dropped to the null class 10 with probability ``--p-uncond``
   for classifier-free guidance (Ho & Salimans 2022); EMA of the weights (decay ``--ema-decay``, with
   the usual (1 + n) / (10 + n) warm-up).
2. ``NoisyDigitClassifier``: cross-entropy on x_t at uniformly drawn k (Dhariwal & Nichol 2021, Sec. 4),
   used by classifier guidance.
3. ``DigitFeatureNet``: clean-image digit classifier (random +-1 pixel shifts as augmentation); its
   penultimate layer is the feature space of the embedded Frechet distance.

Usage::

    python scripts/train_embedded.py                     # the committed weights (ld3/assets)
    python scripts/train_embedded.py --quick --out /tmp/digits   # a few iterations, for tests

All randomness comes from ``--seed`` (network initialisation and one torch.Generator per network);
with the same seed, thread count and torch build the weights are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors.torch import save as safetensors_save
from torch.nn import functional as F
from tqdm import tqdm

from ld3.cli import apply_threads, threads_arg
from ld3.models import digits_nets
from ld3.models.digits_data import digits_split, split_fingerprint
from ld3.schedules import ddpm_linear_betas
from ld3.utils import atomic_write_bytes, atomic_write_json, resolve_device, sha256_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "ld3" / "assets"
MANIFEST_NAME = "digits_manifest.json"
FILES = {
    "denoiser_ema": "digits_denoiser_ema.safetensors",
    "denoiser": "digits_denoiser.safetensors",
    "noisy_classifier": "digits_noisy_classifier.safetensors",
    "feature_net": "digits_feature_net.safetensors",
}
BETAS = {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 2e-2}
ARCH = {
    "denoiser": ("DigitsUNet", {"channels": [16, 32, 64], "num_res_blocks": 1, "emb_dim": 128, "num_classes": 10,
                                "dropout": 0.0, "sigma_data": 0.75,
                                "schedule": dict(BETAS)}),
    "noisy_classifier": ("NoisyDigitClassifier", {"channels": [16, 32, 64], "emb_dim": 64, "num_classes": 10}),
    "feature_net": ("DigitFeatureNet", {"channels": [16, 32], "feature_dim": 64, "num_classes": 10, "dropout": 0.3}),
}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: ld3/assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=4000, help="denoiser training iterations")
    p.add_argument("--clf-iters", type=int, default=1500, help="noise-conditional classifier iterations")
    p.add_argument("--feat-iters", type=int, default=1000, help="feature network iterations")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="denoiser peak learning rate (AdamW)")
    p.add_argument("--clf-lr", type=float, default=2e-3)
    p.add_argument("--feat-lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up iterations (then cosine to 10%%)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.15, help="label dropout probability (CFG)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the stratified train/val split")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=threads_arg, default=1, help="torch CPU threads; the bits depend on it")
    p.add_argument("--quick", action="store_true", help="a few iterations of everything (tests, smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="disable tqdm bars")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.clf_iters, args.feat_iters = 12, 6, 6
        args.batch_size = min(args.batch_size, 32)
        args.warmup = 2
    for name in ("iters", "clf_iters", "feat_iters", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.p_uncond < 1.0:
        raise ValueError(f"--p-uncond must lie in [0, 1), got {args.p_uncond}")
    if not 0.0 < args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must lie in (0, 1), got {args.ema_decay}")
    return args


def lr_at(it: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 0.1 * peak."""
    if it < warmup:
        return peak * (it + 1) / warmup
    frac = (it - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def make_net(part: str, seed: int, device: torch.device) -> torch.nn.Module:
    arch, kwargs = ARCH[part]
    torch.manual_seed(seed)
    return digits_nets.build(arch, **kwargs).to(device)


def q_sample(x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise (DDPM forward process)."""
    a = alphas_cumprod[k].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def train_denoiser(args, x: torch.Tensor, y: torch.Tensor, abar: torch.Tensor, device) -> Dict[str, Any]:
    net = make_net("denoiser", args.seed, device)
    ema = make_net("denoiser", args.seed, device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + 1)
    n, null = x.shape[0], net.null_class
    losses: List[float] = []
    bar = tqdm(range(args.iters), desc="denoiser", disable=args.no_progress, mininterval=2.0)
    for it in bar:
        idx = torch.randint(n, (args.batch_size,), generator=g)
        k = torch.randint(abar.numel(), (args.batch_size,), generator=g)
        noise = torch.randn((args.batch_size,) + tuple(x.shape[1:]), generator=g)
        drop = torch.rand(args.batch_size, generator=g) < args.p_uncond
        x0, labels = x[idx], y[idx].clone()
        labels[drop] = null
        xt = q_sample(x0, k, noise, abar)
        set_lr(opt, lr_at(it, args.iters, args.lr, args.warmup))
        pred = net(xt.to(device), k.to(device, torch.float32), labels.to(device))
        loss = F.mse_loss(pred, noise.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, min(args.ema_decay, (1.0 + it) / (10.0 + it)))
        losses.append(loss.item())
        if it % 50 == 0 or it == args.iters - 1:
            bar.set_postfix(loss=f"{sum(losses[-200:]) / len(losses[-200:]):.4f}")
    return {"net": net, "ema": ema, "final_loss": sum(losses[-200:]) / len(losses[-200:])}


@torch.no_grad()
def denoiser_val_loss(net, x, y, abar, device, seed: int) -> float:
    """Mean eps-MSE on the validation images over a fixed set of (k, noise) draws."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    net.eval()
    tot, cnt = 0.0, 0
    for _ in range(4):
        k = torch.randint(abar.numel(), (x.shape[0],), generator=g)
        noise = torch.randn(x.shape, generator=g)
        pred = net(q_sample(x, k, noise, abar).to(device), k.to(device, torch.float32), y.to(device))
        tot += F.mse_loss(pred, noise.to(device), reduction="sum").item()
        cnt += noise.numel()
    net.train()
    return tot / cnt


def train_noisy_classifier(args, x, y, abar, device) -> Dict[str, Any]:
    net = make_net("noisy_classifier", args.seed + 1, device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.clf_lr, weight_decay=1e-4)
    g = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + 2)
    n = x.shape[0]
    bar = tqdm(range(args.clf_iters), desc="noisy classifier", disable=args.no_progress, mininterval=2.0)
    for it in bar:
        idx = torch.randint(n, (args.batch_size,), generator=g)
        k = torch.randint(abar.numel(), (args.batch_size,), generator=g)
        noise = torch.randn((args.batch_size,) + tuple(x.shape[1:]), generator=g)
        xt = q_sample(x[idx], k, noise, abar)
        set_lr(opt, lr_at(it, args.clf_iters, args.clf_lr, args.warmup))
        loss = F.cross_entropy(net(xt.to(device), k.to(device, torch.float32)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return {"net": net}


@torch.no_grad()
def noisy_classifier_accuracy(net, x, y, abar, device, ks=(0, 250, 500, 750, 999), seed: int = 0) -> Dict[str, float]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    net.eval()
    out = {}
    for k in ks:
        noise = torch.randn(x.shape, generator=g)
        kk = torch.full((x.shape[0],), k, dtype=torch.long)
        logits = net(q_sample(x, kk, noise, abar).to(device), kk.to(device, torch.float32))
        out[f"k={k}"] = (logits.argmax(-1).cpu() == y).float().mean().item()
    net.train()
    return out


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (background-filled)."""
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(b, h, w)
    bidx = torch.arange(b)[:, None, None].expand(b, h, w)
    return pad[bidx, 0, rows, cols][:, None]


def train_feature_net(args, x, y, device) -> Dict[str, Any]:
    net = make_net("feature_net", args.seed + 2, device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.feat_lr, weight_decay=1e-4)
    g = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + 3)
    n = x.shape[0]
    bar = tqdm(range(args.feat_iters), desc="feature net", disable=args.no_progress, mininterval=2.0)
    for it in bar:
        idx = torch.randint(n, (args.batch_size,), generator=g)
        xb = random_shift(x[idx], g)
        set_lr(opt, lr_at(it, args.feat_iters, args.feat_lr, args.warmup))
        loss = F.cross_entropy(net(xb.to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return {"net": net}


@torch.no_grad()
def feature_net_accuracy(net, x, y, device) -> float:
    net.eval()
    acc = (net(x.to(device)).argmax(-1).cpu() == y).float().mean().item()
    net.train()
    return acc


def state_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> bytes:
    sd = {k: (v.detach().cpu().contiguous() if dtype is None else v.detach().cpu().to(dtype).contiguous())
          for k, v in module.state_dict().items()}
    return safetensors_save(sd)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    apply_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t_start, cpu_start = time.perf_counter(), time.process_time()

    x_tr, y_tr = digits_split("train", 16, seed=args.split_seed)
    x_va, y_va = digits_split("val", 16, seed=args.split_seed)
    betas = ddpm_linear_betas(**BETAS)
    abar = torch.cumprod(1.0 - betas, 0).float()

    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    den = train_denoiser(args, x_tr, y_tr, abar, device)
    timings["denoiser_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = train_noisy_classifier(args, x_tr, y_tr, abar, device)
    timings["noisy_classifier_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feat = train_feature_net(args, x_tr, y_tr, device)
    timings["feature_net_s"] = time.perf_counter() - t0

    metrics = {
        "denoiser_train_loss": den["final_loss"],
        "denoiser_val_loss_ema": denoiser_val_loss(den["ema"], x_va, y_va, abar, device, seed=12345),
        "denoiser_val_loss_raw": denoiser_val_loss(den["net"], x_va, y_va, abar, device, seed=12345),
        "noisy_classifier_val_accuracy": noisy_classifier_accuracy(clf["net"], x_va, y_va, abar, device),
        "feature_net_val_accuracy": feature_net_accuracy(feat["net"], x_va, y_va, device),
        "feature_net_train_accuracy": feature_net_accuracy(feat["net"], x_tr, y_tr, device),
    }
    timings["total_s"] = time.perf_counter() - t_start
    timings["total_cpu_s"] = time.process_time() - cpu_start  # all threads; wall time on an idle machine is lower

    out = Path(args.out)
    blobs = {
        "denoiser_ema": state_bytes(den["ema"]),
        # raw (non-EMA) weights in float16: kept for comparison / fine-tuning within the 5 MB budget
        "denoiser": state_bytes(den["net"], torch.float16),
        "noisy_classifier": state_bytes(clf["net"]),
        "feature_net": state_bytes(feat["net"]),
    }
    files = {}
    for part, data in blobs.items():
        path = atomic_write_bytes(out / FILES[part], data)
        files[part] = {"file": FILES[part], "sha256": sha256_file(path), "bytes": path.stat().st_size,
                       "dtype": "float16" if part == "denoiser" else "float32"}
    nets = {"denoiser": den["ema"], "noisy_classifier": clf["net"], "feature_net": feat["net"]}
    manifest = {
        "format": "ld3.digits/1",
        "generated_by": "scripts/train_embedded.py",
        "command": " ".join(["python", "scripts/train_embedded.py"] + list(sys.argv[1:] if argv is None else argv)),
        "files": files,
        "architectures": {part: {"class": a, "kwargs": kw} for part, (a, kw) in ARCH.items()},
        "parameter_counts": {part: digits_nets.count_parameters(m) for part, m in nets.items()},
        "schedule": {"kind": "vp_discrete", "betas": "ddpm_linear", **BETAS},
        "data": {"source": "sklearn.datasets.load_digits", "size": 16, "range": [-1, 1], "split_seed": args.split_seed,
                 "n_train": int(x_tr.shape[0]), "n_val": int(x_va.shape[0]),
                 "val_fingerprint": split_fingerprint(args.split_seed)},
        "training": {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")} | {
            "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "timings": timings},
        "metrics": metrics,
        "null_class": 10,
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    print(json.dumps({"out": str(out), "timings": timings, "metrics": metrics,
                      "parameter_counts": manifest["parameter_counts"]}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
