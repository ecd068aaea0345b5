"""Sample a model with one solver and discretization, then score the samples with a Fréchet distance.

The flow of ``eval_fid.py``: load the model, build the solver and the time grid (any discretization
kind, learned files included, with their decoupled ``model_timesteps``), draw one latent per seed
(``ld3.data.latents``, so sample i is the same whatever the batch size), integrate, decode to pixels,
accumulate features, and compare with reference statistics (an ``.npz`` with ``mu``/``sigma``, or
statistics computed from a reference image set such as the embedded model's validation split).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ld3.data.latents import latents_and_labels, prior_transform
from ld3.metrics.fid import FeatureStats, get_feature_extractor, load_stats, save_stats
from ld3.metrics.frechet import frechet_distance
from ld3.utils import atomic_write_json, resolve_device

_REFERENCE_IMAGES: Dict[str, Callable[..., torch.Tensor]] = {}


def register_reference_images(name: str):
    """Register a function ``fn(split) -> images in [-1, 1] (N, C, H, W)`` for reference statistics."""

    def deco(fn):
        _REFERENCE_IMAGES[name] = fn
        return fn

    return deco


@register_reference_images("digits")
def _digits_reference(split: str = "val") -> torch.Tensor:
    from ld3.models.digits_data import digits_split

    images, _ = digits_split(split)
    return images


def reference_statistics(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    ref_stats: Optional[str],
    reference_images: Optional[str],
    reference_split: str,
    cache_path: Optional[Path],
    batch_size: int = 500,
) -> Tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, description) from an ``.npz`` file or from a registered reference image set."""
    if ref_stats:
        mu, sigma = load_stats(ref_stats)
        return mu, sigma, str(ref_stats)
    if not reference_images:
        raise ValueError("FID needs fid.ref_stats (an .npz with mu, sigma) or fid.reference_images (e.g. digits)")
    if reference_images not in _REFERENCE_IMAGES:
        raise ValueError(f"unknown reference image set {reference_images!r}; available: {sorted(_REFERENCE_IMAGES)}")
    if cache_path is not None and cache_path.is_file():
        mu, sigma = load_stats(cache_path)
        return mu, sigma, str(cache_path)
    images = _REFERENCE_IMAGES[reference_images](reference_split)
    stats = FeatureStats()
    for i in range(0, images.shape[0], batch_size):
        stats.update(feature_fn(images[i : i + batch_size]))
    mu, sigma = stats.mu_sigma()
    if cache_path is not None:
        save_stats(cache_path, mu, sigma)
    return mu, sigma, f"{reference_images}:{reference_split} ({images.shape[0]} images)"


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """A PNG grid of images in [-1, 1], enlarged so that small images are visible (ld3.utils.images)."""
    from ld3.utils.images import save_image_grid

    return save_image_grid(images, path, nrow=nrow)


def evaluate_fid(
    model: Any,
    solver: Any,
    timesteps: torch.Tensor,
    model_timesteps: Optional[torch.Tensor] = None,
    num_samples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    feature: str = "model",
    feature_options: Optional[Dict[str, Any]] = None,
    ref_stats: Optional[str] = None,
    reference_images: Optional[str] = None,
    reference_split: str = "val",
    reference_cache: Optional[Path] = None,
    guidance_type: Optional[str] = None,
    guidance_scale: Optional[float] = None,
    device: str = "auto",
    grid_path: Optional[Path] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Sample ``num_samples`` images (seeds ``seed ..``) and return the Fréchet distance and timing."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a covariance, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    ns = model.noise_schedule
    options = dict(feature_options or {})
    if feature == "model":
        options["feature_fn"] = model.feature_fn
    else:
        options.setdefault("device", str(dev))
    feature_fn = get_feature_extractor(feature, **options)
    mu_ref, sigma_ref, ref_desc = reference_statistics(
        feature_fn, ref_stats, reference_images, reference_split, reference_cache
    )
    guidance_type = guidance_type or model.default_guidance
    # class-conditional networks without a null class always need labels (EDM / ADM conditional models)
    conditional = bool(model.num_classes) and (guidance_type != "uncond" or model.null_class is None)
    stats = FeatureStats()
    first_images = None
    t0 = time.perf_counter()
    seeds = list(range(seed, seed + num_samples))
    bar = tqdm(total=num_samples, desc="sampling", disable=not progress, unit="img")
    with torch.no_grad():
        for i in range(0, num_samples, batch_size):
            chunk = seeds[i : i + batch_size]
            latents, labels = latents_and_labels(chunk, model.shape, model.num_classes if conditional else 0)
            x_T = prior_transform(ns, latents.to(dev))
            kwargs: Dict[str, Any] = {}
            if conditional:
                labels = labels.to(dev)
                kwargs["condition"] = labels
                if model.null_class is not None:
                    kwargs["unconditional_condition"] = torch.full_like(labels, model.null_class)
            model_fn = model.model_fn(guidance_type=guidance_type, guidance_scale=guidance_scale, **kwargs)
            x0 = solver.sample(model_fn, x_T, timesteps.to(dev),
                               model_timesteps=None if model_timesteps is None else model_timesteps.to(dev))
            images = model.to_pixels(x0).clamp(-1, 1)
            if first_images is None:
                first_images = images[:64].cpu()
            stats.update(feature_fn(images))
            bar.update(len(chunk))
    bar.close()
    elapsed = time.perf_counter() - t0
    mu, sigma = stats.mu_sigma()
    fd = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    if grid_path is not None and first_images is not None:
        save_grid(first_images, grid_path, nrow=int(math.ceil(math.sqrt(first_images.shape[0]))))
    return {
        "fid": fd,
        "feature": feature,
        "num_samples": num_samples,
        "reference": ref_desc,
        "nfe": int(solver.nfe(int(timesteps.numel()))),
        "sampling_seconds": elapsed,
        "images_per_second": num_samples / elapsed if elapsed > 0 else float("inf"),
    }


def run_from_config(cfg: Any) -> Dict[str, Any]:
    """The body of ``eval_fid.py`` (a Hydra config as in configs/eval_fid.yaml)."""
    from omegaconf import OmegaConf

    from ld3.discretizations import get_discretization
    from ld3.logging import make_logger
    from ld3.models.zoo import load_model
    from ld3.solvers import get_solver

    dev = resolve_device(cfg.device)
    model_opts = dict(OmegaConf.to_container(cfg.model.options, resolve=True) or {})
    if cfg.model.name != "analytic_gmm":
        model_opts.setdefault("device", str(dev))
    model = load_model(cfg.model.name, **model_opts)
    solver = get_solver(cfg.solver.name, model.noise_schedule,
                        **(OmegaConf.to_container(cfg.solver.options, resolve=True) or {}))
    from ld3.discretizations.gits import with_model_options

    kind = str(cfg.discretization.kind).lower()
    disc_opts = with_model_options(kind, OmegaConf.to_container(cfg.discretization.options, resolve=True) or {},
                                   model, dev, cfg.model.get("guidance_type"), cfg.model.get("guidance_scale"))
    if kind == "learned":
        disc_opts.setdefault("model", cfg.model.name)  # refuse a schedule learned for another model
    disc = get_discretization(cfg.discretization.kind, model.noise_schedule, int(cfg.steps), solver=solver,
                              **disc_opts)
    name = f"{cfg.model.name}-{cfg.solver.name}-N{cfg.steps}-{cfg.discretization.kind}-{cfg.fid.feature}"
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.runs_dir) / "fid" / name
    ref_cache = None
    if cfg.fid.get("reference_images"):
        ref_name = f"{cfg.fid.reference_images}-{cfg.fid.reference_split}-{cfg.fid.feature}.npz"
        ref_cache = Path(cfg.paths.fid_refs) / ref_name
    result = evaluate_fid(
        model,
        solver,
        disc.timesteps,
        model_timesteps=disc.model_timesteps,
        num_samples=int(cfg.num_samples),
        batch_size=int(cfg.batch_size),
        seed=int(cfg.seed),
        feature=cfg.fid.feature,
        feature_options={"weights_path": cfg.fid.inception_weights} if cfg.fid.feature == "inception" else None,
        ref_stats=cfg.fid.get("ref_stats"),
        reference_images=cfg.fid.get("reference_images"),
        reference_split=cfg.fid.get("reference_split", "val"),
        reference_cache=ref_cache,
        guidance_type=cfg.model.get("guidance_type"),
        guidance_scale=cfg.model.get("guidance_scale"),
        device=str(dev),
        grid_path=out_dir / "samples.png" if cfg.get("save_grid", True) else None,
        progress=bool(cfg.get("progress", True)),
    )
    result.update(model=cfg.model.name, solver=cfg.solver.name, steps=int(cfg.steps),
                  discretization=cfg.discretization.kind, timesteps=disc.timesteps.tolist())
    atomic_write_json(out_dir / "fid.json", result)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(cfg.logger, run_config=run_config, run_name=name)
    logger.log_result({k: v for k, v in result.items() if k != "timesteps"})
    logger.finish()
    return result
