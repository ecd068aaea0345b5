"""The model zoo: one loader per model family, all returning a :class:`LoadedModel`.

A loader is registered with :func:`register_model` and called as ``loader(**options)``; options come
from the Hydra ``model/`` config group. ``load_model(name, **options)`` is the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ld3.models.wrapper import model_wrapper
from ld3.schedules import NoiseSchedule

_LOADERS: Dict[str, Callable[..., "LoadedModel"]] = {}


@dataclass
class LoadedModel:
    """Everything a sampler, learner or evaluator needs to know about one model.

    Attributes:
        name: zoo id (e.g. ``digits``).
        noise_schedule: its :class:`~ld3.schedules.NoiseSchedule`.
        network: raw network ``net(x, t_input, cond=None)`` in the model's own parameterization.
        model_type: ``noise``, ``x_start``, ``v`` or ``score``.
        shape: shape of one x_T sample, e.g. (1, 16, 16) or the latent shape.
        num_classes: number of classes for class-conditional models, else None.
        null_class: the label used as "unconditional" for classifier-free guidance, if any.
        classifier: ``classifier_fn(x, t_input, y)`` -> log p(y | x_t), for classifier guidance.
        decode: latent -> pixels in [-1, 1] (latent models), else None (identity).
        cond_process_fn: maps raw conditions (labels, prompts) to what the network takes.
        feature_fn: image features for a Frechet distance (the model's own), if any.
        default_guidance: ``uncond``, ``classifier`` or ``classifier-free``.
        default_guidance_scale: the scale used when the config does not give one.
        metadata: free-form facts (checksums, paths, parameter counts, resolution).
    """

    name: str
    noise_schedule: NoiseSchedule
    network: Callable[..., torch.Tensor]
    model_type: str
    shape: Tuple[int, ...]
    num_classes: Optional[int] = None
    null_class: Optional[int] = None
    classifier: Optional[Callable[..., torch.Tensor]] = None
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    cond_process_fn: Optional[Callable[[Any], Any]] = None
    feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    default_guidance: str = "uncond"
    default_guidance_scale: float = 1.0
    metadata: Dict[str, Any] = field(default_factory=dict)

    def model_fn(
        self,
        guidance_type: Optional[str] = None,
        guidance_scale: Optional[float] = None,
        condition: Any = None,
        unconditional_condition: Any = None,
        **kwargs: Any,
    ) -> Callable[..., torch.Tensor]:
        """The continuous-time noise-prediction function (see :func:`ld3.model_wrapper`)."""
        guidance_type = guidance_type or self.default_guidance
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if guidance_type == "classifier" and self.classifier is None:
            raise ValueError(f"model {self.name!r} has no classifier; classifier guidance is unavailable")
        return model_wrapper(
            self.network,
            self.noise_schedule,
            model_type=self.model_type,
            guidance_type=guidance_type,
            guidance_scale=scale,
            condition=condition,
            unconditional_condition=unconditional_condition,
            classifier_fn=self.classifier,
            cond_process_fn=self.cond_process_fn,
            **kwargs,
        )

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Decode a sample to pixel space in [-1, 1] (identity for pixel models)."""
        return x if self.decode is None else self.decode(x)


def register_model(name: str) -> Callable[[Callable[..., LoadedModel]], Callable[..., LoadedModel]]:
    """Decorator registering a zoo loader under ``name``."""

    def deco(fn: Callable[..., LoadedModel]) -> Callable[..., LoadedModel]:
        if name in _LOADERS:
            raise ValueError(f"model loader {name!r} is already registered")
        _LOADERS[name] = fn
        return fn

    return deco


def available_models() -> List[str]:
    _import_builtin_loaders()
    return sorted(_LOADERS)


def load_model(name: str, **options: Any) -> LoadedModel:
    """Load a zoo model by name; options are the loader's keyword arguments."""
    _import_builtin_loaders()
    if name not in _LOADERS:
        raise ValueError(f"unknown model {name!r}; available models: {sorted(_LOADERS)}")
    _check_options(name, _LOADERS[name], options)
    return _LOADERS[name](**options)


def _check_options(name: str, loader: Callable[..., LoadedModel], options: Dict[str, Any]) -> None:
    """Refuse options the loader does not take (a ValueError naming them), before any work starts."""
    import inspect

    params = inspect.signature(loader).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    allowed = sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} does not take option(s) {unknown}; allowed options: {allowed}")


def _import_builtin_loaders() -> None:
    """Import the loader modules so they register themselves (lazy: keeps `import ld3` light)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):  # type: ignore[name-defined]
        importlib.import_module(f"{__name__}.{mod.name}")
