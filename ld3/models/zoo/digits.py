"""Zoo entry ``digits``: the embedded default model (16 x 16 class-conditional digits, weights in ld3/assets).

Three small networks trained by ``scripts/train_embedded.py`` (see docs/model_card.md):

* a noise-prediction U-Net on the discrete VP schedule with 1000 DDPM linear betas (network time
  k = (t - 1/N) * 1000, :func:`ld3.models.wrapper.model_time_input`), classes 0..9 plus the null
  class 10 for classifier-free guidance;
* a noise-conditional classifier, ``classifier(x, t_input, y) -> log p(y | x_t)``, for classifier guidance;
* a clean-image digit classifier whose penultimate layer (64 features) is ``feature_fn``, the feature
  space of the embedded Frechet distance (:mod:`ld3.metrics.frechet`).

Every weight file is checked against the sha256 in ``digits_manifest.json`` before it is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

import torch
from safetensors.torch import load_file

from ld3.models import digits_nets
from ld3.models.zoo import LoadedModel, register_model
from ld3.schedules import NoiseScheduleVP, ddpm_linear_betas
from ld3.utils import resolve_device, sha256_file

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "assets"
MANIFEST_NAME = "digits_manifest.json"
REGENERATE_HINT = (
    "restore it from git (git checkout -- ld3/assets) or regenerate the weights with "
    "`python scripts/train_embedded.py --out <weights_dir>`"
)
#: classifier-free guidance scale w in eps_u + w (eps_c - eps_u) used when a config gives none
DEFAULT_CFG_SCALE = 2.0
#: a classifier-guidance scale that gives clean class-consistent samples (for configs and docs)
DEFAULT_CLASSIFIER_SCALE = 2.0
GUIDANCE_SCALES = {"uncond": 1.0, "classifier": DEFAULT_CLASSIFIER_SCALE, "classifier-free": DEFAULT_CFG_SCALE}


class WeightsIntegrityError(RuntimeError):
    """A weight file is missing, corrupted or does not match its manifest."""


def read_manifest(weights_dir: Union[str, Path]) -> Dict[str, Any]:
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"digits manifest {path} not found; {REGENERATE_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsIntegrityError(f"digits manifest {path} is not valid JSON ({e}); {REGENERATE_HINT}") from e
    if manifest.get("format") != "ld3.digits/1":
        raise WeightsIntegrityError(
            f"{path} has format {manifest.get('format')!r}, expected 'ld3.digits/1'; {REGENERATE_HINT}"
        )
    return manifest


def verified_path(weights_dir: Union[str, Path], manifest: Dict[str, Any], part: str) -> Path:
    """Path of ``part``'s weight file after checking its sha256 against the manifest."""
    entry = manifest["files"].get(part)
    if entry is None:
        raise WeightsIntegrityError(f"digits manifest in {weights_dir} lists no {part!r} file; {REGENERATE_HINT}")
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"digits weight file {path} not found; {REGENERATE_HINT}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsIntegrityError(
            f"checksum mismatch for {path}: sha256 {digest} but the manifest records {entry['sha256']}; "
            f"the file is corrupted or was changed. {REGENERATE_HINT[0].upper() + REGENERATE_HINT[1:]}"
        )
    return path


def load_network(
    weights_dir: Union[str, Path], manifest: Dict[str, Any], part: str, arch_part: str, device: torch.device,
    verify: bool = True,
) -> torch.nn.Module:
    """Build ``arch_part``'s architecture and load ``part``'s (checked) weights into it, in eval mode."""
    arch = manifest["architectures"][arch_part]
    net = digits_nets.build(arch["class"], **arch["kwargs"])
    path = verified_path(weights_dir, manifest, part) if verify else Path(weights_dir) / manifest["files"][part]["file"]
    try:
        state = load_file(str(path), device="cpu")
        state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
        net.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors header errors, shape / key mismatches
        raise WeightsIntegrityError(f"cannot load {path} into {arch['class']}: {e}; {REGENERATE_HINT}") from e
    net.requires_grad_(False)
    return net.eval().to(device)


@register_model("digits")
def load_digits(
    weights_dir: Union[str, Path] | None = None,
    device: str = "cpu",
    use_ema: bool = True,
    verify: bool = True,
    guidance_type: str = "classifier-free",
    guidance_scale: float | None = None,
    **unknown: Any,
) -> LoadedModel:
    """Load the embedded digits model.

    Args:
        weights_dir: directory with ``digits_manifest.json`` and the safetensors files
            (default: the package's ``ld3/assets``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        use_ema: EMA denoiser weights (default) or the raw final weights (stored in float16).
        verify: check every file's sha256 against the manifest (default; turn off only for speed
            in trusted loops).
        guidance_type: default guidance of :meth:`LoadedModel.model_fn`: ``uncond``, ``classifier``
            or ``classifier-free``.
        guidance_scale: its default scale (``GUIDANCE_SCALES[guidance_type]`` when None).
    """
    if unknown:
        raise ValueError(
            f"unknown options for model 'digits': {sorted(unknown)}; allowed: weights_dir, device, use_ema, "
            f"verify, guidance_type, guidance_scale"
        )
    if guidance_type not in GUIDANCE_SCALES:
        raise ValueError(f"guidance_type={guidance_type!r} is not supported; allowed: {list(GUIDANCE_SCALES)}")
    weights_dir = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    dev = resolve_device(device)
    manifest = read_manifest(weights_dir)
    sched = manifest["schedule"]
    ns = NoiseScheduleVP(
        "discrete",
        betas=ddpm_linear_betas(sched["num_steps"], sched["beta_start"], sched["beta_end"]),
    )
    inner = manifest["architectures"]["denoiser"]["kwargs"].get("schedule")
    if inner is not None and any(inner[k] != sched[k] for k in ("num_steps", "beta_start", "beta_end")):
        raise WeightsIntegrityError(
            f"{Path(weights_dir) / MANIFEST_NAME}: the denoiser's preconditioning schedule {inner} differs from the "
            f"model schedule {sched}; {REGENERATE_HINT}"
        )
    denoiser = load_network(weights_dir, manifest, "denoiser_ema" if use_ema else "denoiser", "denoiser", dev, verify)
    noisy_clf = load_network(weights_dir, manifest, "noisy_classifier", "noisy_classifier", dev, verify)
    feature_net = load_network(weights_dir, manifest, "feature_net", "feature_net", dev, verify)
    num_classes = int(denoiser.num_classes)
    metadata = {
        "weights_dir": str(weights_dir),
        "use_ema": use_ema,
        "device": str(dev),
        "checksums": {part: entry["sha256"] for part, entry in manifest["files"].items()},
        "parameter_counts": manifest.get("parameter_counts", {}),
        "resolution": 16,
        "data": manifest.get("data", {}),
        "training": manifest.get("training", {}),
        "suggested_guidance_scales": dict(GUIDANCE_SCALES),
        "feature_dim": int(feature_net.feature_dim),
    }
    return LoadedModel(
        name="digits",
        noise_schedule=ns,
        network=denoiser,
        model_type="noise",
        shape=(1, 16, 16),
        num_classes=num_classes,
        null_class=num_classes,
        classifier=digits_nets.ClassifierLogProb(noisy_clf),
        feature_fn=digits_nets.FeatureExtractor(feature_net),
        default_guidance=guidance_type,
        default_guidance_scale=GUIDANCE_SCALES[guidance_type] if guidance_scale is None else float(guidance_scale),
        metadata=metadata,
    )
