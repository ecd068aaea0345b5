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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ld3.data.conditions import ConditionPlan
from ld3.data.latents import prior_transform
from ld3.metrics.accumulate import accumulate_features, fingerprint
from ld3.metrics.distributed import DistContext, init_distributed
from ld3.metrics.fid import FeatureStats, get_feature_extractor, load_stats, save_stats
from ld3.metrics.frechet import frechet_distance
from ld3.metrics.images import ImageSet, save_pngs
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


def _registered_images(name: str, split: str) -> torch.Tensor:
    if name not in _REFERENCE_IMAGES:
        raise ValueError(f"unknown reference image set {name!r}; available: {sorted(_REFERENCE_IMAGES)} "
                         f"(or give a folder / .zip of images)")
    return _REFERENCE_IMAGES[name](split)


def image_batches(
    source: str, split: str = "val", batch_size: int = 500
) -> Tuple[int, Callable[[int], torch.Tensor], str]:
    """(number of batches, ``b -> images in [-1, 1]``, description) of a registered set, a folder or a .zip."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if source in _REFERENCE_IMAGES:
        images = _registered_images(source, split)
        n = images.shape[0]
        return (-(-n // batch_size), lambda b: images[b * batch_size : (b + 1) * batch_size],
                f"{source}:{split} ({n} images)")
    path = Path(source)
    if not path.exists():
        raise ValueError(f"image source {source!r} is neither a registered set {sorted(_REFERENCE_IMAGES)} "
                         f"nor an existing folder / .zip")
    imgset = ImageSet(path)
    n = len(imgset)
    return (-(-n // batch_size),
            lambda b: imgset.load(range(b * batch_size, min((b + 1) * batch_size, n))),
            f"{imgset.kind} {path} ({n} images)")


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the 256 levels of an 8-bit PNG (what FID is defined on)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def image_statistics(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    source: str,
    split: str = "val",
    batch_size: int = 500,
    quantize: bool = True,
    ctx: Optional[DistContext] = None,
    progress: bool = False,
) -> Tuple[FeatureStats, str]:
    """Feature statistics of an image set (registered name, folder or .zip), sharded over processes."""
    num_batches, produce, desc = image_batches(source, split, batch_size)
    prep = (lambda b: quantize_8bit(produce(b))) if quantize else produce
    acc = accumulate_features(num_batches, prep, feature_fn, ctx=ctx, progress=progress, desc="reference",
                              batch_size_hint=batch_size)
    return acc.stats, desc


def reference_statistics(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    ref_stats: Optional[str],
    reference_images: Optional[str],
    reference_split: str,
    cache_path: Optional[Path],
    batch_size: int = 500,
    quantize: bool = True,
    ctx: Optional[DistContext] = None,
) -> Tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, description) from an ``.npz`` file (EDM/ADM files load as they are), or from an image
    set (registered name, folder or .zip) whose statistics are cached at ``cache_path``."""
    if ref_stats:
        mu, sigma = load_stats(ref_stats)
        return mu, sigma, str(ref_stats)
    if not reference_images:
        raise ValueError("FID needs fid.ref_stats (an .npz with mu, sigma) or fid.reference_images "
                         "(a registered set such as digits, a folder or a .zip of images)")
    if cache_path is not None and Path(cache_path).is_file():
        mu, sigma = load_stats(cache_path)
        return mu, sigma, f"{reference_images}:{reference_split} (cached: {cache_path})"
    stats, desc = image_statistics(feature_fn, reference_images, reference_split, batch_size, quantize, ctx)
    mu, sigma = stats.mu_sigma()
    if cache_path is not None:
        if ctx is None or ctx.is_main:
            save_stats(cache_path, mu, sigma)
        desc = f"{reference_images}:{reference_split} (cached: {cache_path})"
    return mu, sigma, desc


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """A PNG grid of images in [-1, 1], enlarged so that small images are visible (ld3.utils.images)."""
    from ld3.utils.images import save_image_grid

    return save_image_grid(images, path, nrow=nrow)


def condition_plan(model: Any, guidance_type: str, prompts: Optional[Sequence[str]] = None) -> ConditionPlan:
    """Conditions of evaluation samples: uniform labels per seed (class models), one prompt per sample
    (text models, the LD3 / COCO protocol: sample i gets caption i), or none."""
    if prompts is not None:
        if model.num_classes:
            raise ValueError(f"model {model.name!r} is class-conditional; captions apply to text-to-image models")
        return ConditionPlan("prompts", prompts=list(prompts),
                             uncond_prompt="" if guidance_type == "classifier-free" else None)
    # class-conditional networks without a null class always need labels (EDM / ADM conditional models)
    if model.num_classes and (guidance_type != "uncond" or model.null_class is None):
        return ConditionPlan("labels", labels="uniform", num_classes=int(model.num_classes),
                             uncond_label=model.null_class)
    if guidance_type != "uncond":
        raise ValueError(f"guidance_type={guidance_type!r} needs conditions, but model {model.name!r} has no "
                         f"classes; give fid.captions for a text-to-image model or use guidance_type=uncond")
    return ConditionPlan("none")


#: metrics eval_fid.py computes (``metrics=[...]``); fid is always computed (its features drive the engine)
METRICS = ("fid", "is", "clip")  # is / clip: BATCH_METRICS below


def parse_metrics(metrics: Any) -> Tuple[str, ...]:
    """The metric names of ``metrics`` (a list from :data:`METRICS`), checked; fid is always included."""
    if metrics is None:
        return ("fid",)
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
        raise ValueError(f"metrics must be a list from {list(METRICS)}, got {metrics!r}")
    names = [str(m).lower() for m in metrics]
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r} in metrics={list(metrics)}; allowed: {list(METRICS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"metrics={list(metrics)} lists a metric twice")
    return tuple(["fid", *[m for m in names if m != "fid"]])


@dataclass
class MetricRequest:
    """What the builders of the extra metrics may use (see :func:`build_batch_metrics`)."""

    feature_fn: Any
    num_samples: int
    batch_size: int
    is_splits: int = 10
    clip_model: Optional[str] = None
    prompts: Optional[Sequence[str]] = None
    device: str = "cpu"


def _build_is(req: MetricRequest) -> Any:
    from ld3.metrics.inception_score import InceptionScoreMetric

    num_classes = getattr(req.feature_fn, "num_classes", None)
    if not num_classes:
        name = getattr(req.feature_fn, "info", {}).get("name", req.feature_fn)
        raise ValueError(f"metrics=[is] needs class logits, but the feature extractor {name!r} has none "
                         f"(use fid=inception, or the digits model's fid=model)")
    return InceptionScoreMetric(req.num_samples, req.batch_size, int(req.is_splits), int(num_classes))


def _build_clip(req: MetricRequest) -> Any:
    from ld3.metrics.clip_score import ClipScoreMetric, ClipScorer

    if req.prompts is None:
        raise ValueError("metrics=[clip] scores text-to-image samples against their captions: set fid.captions "
                         "(e.g. fid=coco30k)")
    if not req.clip_model:
        raise ValueError("metrics=[clip] needs clip_model=<a local transformers CLIP directory>")
    scorer = ClipScorer(req.clip_model, device=req.device)
    caps, bs, n = list(req.prompts), req.batch_size, req.num_samples
    return ClipScoreMetric(scorer, lambda b: caps[b * bs : min((b + 1) * bs, n)])


#: builders of the metrics accumulated next to the FID sums (``metrics=[fid, is, clip]``)
BATCH_METRICS: Dict[str, Callable[[MetricRequest], Any]] = {"is": _build_is, "clip": _build_clip}


def build_batch_metrics(
    names: Sequence[str], feature_fn: Any, num_samples: int, batch_size: int, is_splits: int = 10,
    clip_model: Optional[str] = None, prompts: Optional[Sequence[str]] = None, device: str = "cpu",
) -> Dict[str, Any]:
    """The extra metrics (Inception Score, CLIP score) accumulated next to the FID sums, checked before any
    sampling: IS needs a feature extractor with class logits, CLIP a local model and the captions."""
    req = MetricRequest(feature_fn, num_samples, batch_size, is_splits, clip_model, prompts, device)
    return {name: BATCH_METRICS[name](req) for name in names if name != "fid"}


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
    checkpoint_dir: Optional[Path] = None,
    png_dir: Optional[Path] = None,
    max_batches: Optional[int] = None,
    quantize: bool = True,
    prompts: Optional[Sequence[str]] = None,
    run_info: Optional[Dict[str, Any]] = None,
    ctx: Optional[DistContext] = None,
    metrics: Sequence[str] = ("fid",),
    is_splits: int = 10,
    clip_model: Optional[str] = None,
) -> Dict[str, Any]:
    """Sample ``num_samples`` images (seeds ``seed ..``) and return the Fréchet distance and timing.

    Sample i (seed ``seed + i``) is the same image whatever the batch size or number of processes.
    With ``ctx`` (several processes) the batches are shared and the float64 sums reduced; with
    ``checkpoint_dir`` finished batches survive a kill and a rerun computes only the missing ones;
    ``png_dir`` exports every sample as ``{seed:06d}.png`` in folders of 1,000; ``max_batches`` stops
    each process after that many new batches (the result is then marked incomplete, ``fid`` None).
    ``quantize`` scores the 8-bit images (what a PNG holds), as the published FID pipelines do.
    ``metrics`` adds the Inception Score (``is``, ``is_splits`` contiguous splits of the logits of the same
    feature network) and the CLIP score (``clip``: the local CLIP directory ``clip_model`` against ``prompts``),
    accumulated, checkpointed and reduced like the FID sums.
    """
    names = parse_metrics(list(metrics))
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a covariance, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ctx = ctx or DistContext(device=resolve_device(device))
    dev = ctx.device
    ns = model.noise_schedule
    options = dict(feature_options or {})
    if feature == "model":
        options["feature_fn"] = model.feature_fn
        options.setdefault("model_name", model.name)
        options.setdefault("weights_sha256", (model.metadata.get("checksums") or {}).get("feature_net"))
    else:
        options.setdefault("device", str(dev))
    feature_fn = get_feature_extractor(feature, **options)
    feature_info = getattr(feature_fn, "info", {"name": feature})
    guidance_type = guidance_type or model.default_guidance
    plan = condition_plan(model, guidance_type, prompts)
    if plan.kind == "prompts" and len(plan.prompts) < num_samples:
        raise ValueError(f"{len(plan.prompts)} captions for {num_samples} samples; the protocol uses one per sample")
    num_batches = -(-num_samples // batch_size)
    extra = build_batch_metrics([m for m in names if m != "fid"], feature_fn, num_samples, batch_size, is_splits,
                                clip_model, plan.prompts if plan.kind == "prompts" else None, str(dev))
    mu_ref, sigma_ref, ref_desc = reference_statistics(
        feature_fn, ref_stats, reference_images, reference_split, reference_cache, quantize=quantize, ctx=ctx
    )
    ts = timesteps.detach().to(dev)
    mts = None if model_timesteps is None else model_timesteps.detach().to(dev)

    def batch_seeds(b: int) -> List[int]:
        return list(range(seed + b * batch_size, seed + min((b + 1) * batch_size, num_samples)))

    def produce(b: int) -> torch.Tensor:
        seeds = batch_seeds(b)
        latents, cond, uncond = plan.build(seeds, [s - seed for s in seeds], model.shape)
        x_T = prior_transform(ns, latents.to(dev))
        kwargs: Dict[str, Any] = {}
        if cond is not None:
            kwargs["condition"] = cond.to(dev) if torch.is_tensor(cond) else cond
        if uncond is not None:
            kwargs["unconditional_condition"] = uncond.to(dev) if torch.is_tensor(uncond) else uncond
        model_fn = model.model_fn(guidance_type=guidance_type, guidance_scale=guidance_scale, **kwargs)
        with torch.no_grad():
            x0 = solver.sample(model_fn, x_T, ts, model_timesteps=mts)
            images = model.to_pixels(x0).clamp(-1, 1)
        return quantize_8bit(images) if quantize else images

    def on_batch(b: int, images: torch.Tensor) -> None:
        if png_dir is not None:
            save_pngs(png_dir, batch_seeds(b), images.cpu())
        if b == 0 and grid_path is not None:
            first = images[:64].cpu()
            save_grid(first, grid_path, nrow=int(math.ceil(math.sqrt(first.shape[0]))))

    description = {
        **(run_info or {"model": model.name, "solver": type(solver).__name__}),
        "timesteps": [float(v) for v in timesteps.detach().double().cpu().reshape(-1)],
        "model_timesteps": None if model_timesteps is None
        else [float(v) for v in model_timesteps.detach().double().cpu().reshape(-1)],
        "seed": int(seed), "num_samples": int(num_samples), "batch_size": int(batch_size),
        "guidance_type": guidance_type, "guidance_scale": guidance_scale, "conditions": plan.describe(),
        "feature": feature_info, "quantize": bool(quantize),
    }
    if extra:  # only then: the fingerprints of FID-only runs (and their checkpoints) stay as they were
        description["metrics"] = {name: m.describe() for name, m in extra.items()}
    t0 = time.perf_counter()
    acc = accumulate_features(
        num_batches, produce, feature_fn, ctx=ctx, checkpoint_dir=checkpoint_dir,
        run_fingerprint=fingerprint(description), run_description=description, on_batch=on_batch,
        max_batches=max_batches, batch_size_hint=batch_size, progress=progress, desc="sampling",
        metrics=extra,
    )
    elapsed = time.perf_counter() - t0
    fd = None
    scores: Dict[str, Any] = {}
    if acc.complete:
        mu, sigma = acc.stats.mu_sigma()
        fd = frechet_distance(mu, sigma, mu_ref, sigma_ref)
        for name, m in extra.items():
            scores.update(m.result(acc.metrics[name]))
    computed_images = min(acc.computed_batches * batch_size, num_samples)
    return {
        "fid": fd,
        "feature": feature,
        "feature_extractor": feature_info,
        "num_samples": num_samples,
        "reference": ref_desc,
        "nfe": int(solver.nfe(int(timesteps.numel()))),
        "complete": acc.complete,
        "batches_done": acc.done_batches,
        "batches_total": acc.num_batches,
        "batches_computed": acc.computed_batches,
        "processes": ctx.world_size,
        "fingerprint": fingerprint(description),
        "sampling_seconds": elapsed,
        "images_per_second": computed_images / elapsed if elapsed > 0 and computed_images else None,
        "metrics": list(names),
        **scores,
    }


def score_images(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    source: str,
    mu_ref: np.ndarray,
    sigma_ref: np.ndarray,
    split: str = "val",
    batch_size: int = 500,
    quantize: bool = True,
    ctx: Optional[DistContext] = None,
) -> Tuple[float, int, str]:
    """(Fréchet distance, number of images, description) of an image set against reference statistics."""
    stats, desc = image_statistics(feature_fn, source, split, batch_size, quantize, ctx)
    mu, sigma = stats.mu_sigma()
    return frechet_distance(mu, sigma, mu_ref, sigma_ref), stats.n, desc


MODES = ("sample", "ref", "images")


def _feature_from_config(cfg: Any, model: Any, dev: torch.device) -> Any:
    feature = str(cfg.fid.feature)
    if feature == "model":
        if model is None or model.feature_fn is None:
            raise ValueError(f"fid.feature=model needs a model with a feature network; {cfg.model.name!r} has none")
        return get_feature_extractor("model", feature_fn=model.feature_fn, model_name=model.name,
                                     weights_sha256=(model.metadata.get("checksums") or {}).get("feature_net"))
    options: Dict[str, Any] = {"device": str(dev)}
    if feature == "inception":
        options.update(weights_path=cfg.fid.get("inception_weights"), resize=cfg.fid.get("inception_resize", "tf1"))
    return get_feature_extractor(feature, **options)


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _reference_cache(cfg: Any) -> Optional[Path]:
    ref = cfg.fid.get("reference_images")
    if not ref or ref not in _REFERENCE_IMAGES:
        return None  # folders / zips: build an .npz once with mode=ref and pass it as fid.ref_stats
    q = "-q8" if cfg.fid.get("quantize", True) else ""
    return Path(cfg.paths.fid_refs) / f"{ref}-{cfg.fid.get('reference_split', 'val')}-{cfg.fid.feature}{q}.npz"


def _load_model(cfg: Any, dev: torch.device) -> Any:
    from omegaconf import OmegaConf

    from ld3.models.zoo import load_model

    model_opts = dict(OmegaConf.to_container(cfg.model.options, resolve=True) or {})
    if cfg.model.name != "analytic_gmm":
        model_opts.setdefault("device", str(dev))
    return load_model(cfg.model.name, **model_opts)


def run_from_config(cfg: Any) -> Dict[str, Any]:
    """The body of ``eval_fid.py`` (a Hydra config as in configs/eval_fid.yaml); ``mode`` picks the job:

    * ``sample`` (default): sample the model and score it (sharded over torchrun processes, resumable);
    * ``ref``: reference statistics (``.npz`` with mu, sigma) of ``images`` (registered set, folder, .zip);
    * ``images``: score ``images`` against the configured reference.
    """
    mode = str(cfg.get("mode", "sample"))
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {list(MODES)}")
    names = parse_metrics(_plain(cfg.get("metrics")))
    if mode != "sample" and names != ("fid",):
        raise ValueError(f"metrics={list(names)}: the Inception Score and CLIP score are computed in mode=sample "
                         f"only; mode={mode} computes FID statistics")
    ctx = init_distributed(str(cfg.device))
    try:
        if mode == "sample":
            return _run_sample(cfg, ctx)
        return _run_images(cfg, ctx, mode)
    finally:
        ctx.close()


def _run_images(cfg: Any, ctx: DistContext, mode: str) -> Dict[str, Any]:
    source = cfg.get("images") or cfg.fid.get("reference_images")
    if not source:
        raise ValueError(f"mode={mode} needs images=<registered set | folder | .zip>")
    source = str(source)
    model = _load_model(cfg, ctx.device) if cfg.fid.feature == "model" else None
    feature_fn = _feature_from_config(cfg, model, ctx.device)
    quantize = bool(cfg.fid.get("quantize", True))
    split = cfg.fid.get("reference_split", "val")
    bs = int(cfg.batch_size)
    info = getattr(feature_fn, "info", {"name": cfg.fid.feature})
    if mode == "ref":
        stats, desc = image_statistics(feature_fn, source, split, bs, quantize, ctx, bool(cfg.get("progress", True)))
        mu, sigma = stats.mu_sigma()
        stem = Path(source).stem if Path(source).exists() else f"{source}-{split}"
        out = Path(cfg.ref_out) if cfg.get("ref_out") else Path(cfg.paths.fid_refs) / f"{stem}-{cfg.fid.feature}.npz"
        result = {"mode": "ref", "rank": ctx.rank, "images": desc, "num_images": stats.n, "ref_stats": str(out),
                  "feature": cfg.fid.feature, "feature_extractor": info}
        if ctx.is_main:
            save_stats(out, mu, sigma)
            atomic_write_json(out.with_suffix(".json"), result)
        return result
    mu_ref, sigma_ref, ref_desc = reference_statistics(
        feature_fn, cfg.fid.get("ref_stats"), cfg.fid.get("reference_images"), split, _reference_cache(cfg),
        quantize=quantize, ctx=ctx)
    fd, n, desc = score_images(feature_fn, source, mu_ref, sigma_ref, split, bs, quantize, ctx)
    return {"mode": "images", "rank": ctx.rank, "fid": fd, "images": desc, "num_samples": n, "reference": ref_desc,
            "feature": cfg.fid.feature, "feature_extractor": info, "nfe": None}


def _run_sample(cfg: Any, ctx: DistContext) -> Dict[str, Any]:
    import json

    from omegaconf import OmegaConf

    from ld3.data.conditions import load_prompts
    from ld3.discretizations import get_discretization
    from ld3.logging import make_logger
    from ld3.solvers import get_solver

    dev = ctx.device
    model = _load_model(cfg, dev)
    solver_opts = OmegaConf.to_container(cfg.solver.options, resolve=True) or {}
    solver = get_solver(cfg.solver.name, model.noise_schedule, **solver_opts)
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
    captions = cfg.fid.get("captions")
    prompts = load_prompts(str(captions), int(cfg.num_samples)) if captions else None
    feature_options: Optional[Dict[str, Any]] = None
    if cfg.fid.feature == "inception":
        feature_options = {"weights_path": cfg.fid.inception_weights,
                           "resize": cfg.fid.get("inception_resize", "tf1")}
    run_info = {"model": cfg.model.name, "model_options": OmegaConf.to_container(cfg.model.options, resolve=True),
                "solver": cfg.solver.name, "solver_options": solver_opts, "discretization": kind,
                "captions": str(captions) if captions else None}
    result = evaluate_fid(
        model,
        solver,
        disc.timesteps,
        model_timesteps=disc.model_timesteps,
        num_samples=int(cfg.num_samples),
        batch_size=int(cfg.batch_size),
        seed=int(cfg.seed),
        feature=cfg.fid.feature,
        feature_options=feature_options,
        ref_stats=cfg.fid.get("ref_stats"),
        reference_images=cfg.fid.get("reference_images"),
        reference_split=cfg.fid.get("reference_split", "val"),
        reference_cache=_reference_cache(cfg),
        guidance_type=cfg.model.get("guidance_type"),
        guidance_scale=cfg.model.get("guidance_scale"),
        grid_path=out_dir / "samples.png" if cfg.get("save_grid", True) else None,
        progress=bool(cfg.get("progress", True)),
        checkpoint_dir=out_dir / "checkpoints" if cfg.get("resume", True) else None,
        png_dir=out_dir / "images" if cfg.get("save_png", False) else None,
        max_batches=cfg.get("max_batches"),
        quantize=bool(cfg.fid.get("quantize", True)),
        prompts=prompts,
        run_info=run_info,
        ctx=ctx,
        metrics=parse_metrics(_plain(cfg.get("metrics"))),
        is_splits=int(cfg.get("is_splits", 10)),
        clip_model=str(cfg.clip_model) if cfg.get("clip_model") else None,
    )
    result.update(model=cfg.model.name, solver=cfg.solver.name, steps=int(cfg.steps),
                  discretization=cfg.discretization.kind, timesteps=disc.timesteps.tolist(),
                  out_dir=str(out_dir), rank=ctx.rank)
    if not ctx.is_main or not result["complete"]:
        return result
    previous = out_dir / "fid.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if old.get("fingerprint") == result["fingerprint"] and old.get("reference") == result["reference"]:
            old["already_complete"] = True
            return old  # a finished run is a no-op: nothing sampled, nothing logged twice
    atomic_write_json(previous, result)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(cfg.logger, run_config=run_config, run_name=name)
    logger.log_result({k: v for k, v in result.items()
                       if k not in ("timesteps", "feature_extractor", "clip_model", "inception_score_per_split")})
    logger.finish()
    return result


def describe_result(result: Dict[str, Any]) -> str:
    """The one line ``eval_fid.py`` prints."""
    if result.get("mode") == "ref":
        return f"reference statistics of {result['images']} ({result['feature']}) -> {result['ref_stats']}"
    if result.get("mode") == "images":
        return f"FID ({result['feature']}, {result['images']} vs {result['reference']}): {result['fid']:.4f}"
    if not result.get("complete", True):
        return (f"partial: {result['batches_done']}/{result['batches_total']} batches done "
                f"(rerun the same command to continue)")
    note = " (already complete: nothing sampled)" if result.get("already_complete") else ""
    if result.get("inception_score") is not None:
        note = f", IS {result['inception_score']:.4f} +- {result['inception_score_std']:.4f}{note}"
    if result.get("clip_score") is not None:
        note = f", CLIP score {result['clip_score']:.4f}{note}"
    return f"FID ({result['feature']}, {result['num_samples']} samples, NFE {result['nfe']}): {result['fid']:.4f}{note}"
