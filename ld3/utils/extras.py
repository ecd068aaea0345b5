"""Optional extras: a missing heavy dependency fails with one line that names the extra to install.

The default path (the embedded digits model, analytic models, CPU) needs only the core dependencies of
``pyproject.toml``. Everything else is an extra: ``zoo`` (diffusers, transformers, accelerate: Stable
Diffusion and diffusers UNets), ``fid`` (lpips, torchvision, torchmetrics, torch-fidelity: LPIPS losses,
Inception features, image grids of the FID tool), ``wandb``, ``slurm`` (Hydra's joblib and submitit
launchers), ``all``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: extra -> the distributions it installs (tests/test_lean_install.py checks pyproject.toml against it)
EXTRAS = {
    "zoo": ("diffusers", "transformers", "accelerate"),
    "fid": ("torchvision", "lpips", "torchmetrics", "torch-fidelity"),
    "wandb": ("wandb",),
    "slurm": ("hydra-joblib-launcher", "hydra-submitit-launcher"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module`` or raise :class:`MissingExtraError` naming ``pip install -e '.[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{feature}: the optional package {top!r} is not installed ({e}); "
            f"install the {extra!r} extra: pip install -e '.[{extra}]'"
        ) from None
