"""Zoo entry for the analytic Gaussian-mixture model (exact denoiser; no weights needed)."""

from __future__ import annotations

from typing import Any, Optional

from ld3.models.analytic import AnalyticGMM
from ld3.models.zoo import LoadedModel, register_model
from ld3.schedules import make_schedule


@register_model("analytic_gmm")
def load_analytic_gmm(
    dim: int = 16,
    n_components: int = 4,
    seed: int = 0,
    diagonal: bool = False,
    schedule: str = "vp_discrete",
    model_type: str = "noise",
    schedule_options: Optional[dict] = None,
    **_: Any,
) -> LoadedModel:
    """A random Gaussian mixture in R^dim under ``schedule`` (DDPM linear betas for vp_discrete)."""
    ns = make_schedule(schedule, **dict(schedule_options or {}))
    gmm = AnalyticGMM.random(ns, dim=dim, n_components=n_components, seed=seed, diagonal=diagonal)
    return LoadedModel(
        name="analytic_gmm",
        noise_schedule=ns,
        network=gmm.network(model_type),
        model_type=model_type,
        shape=(dim,),
        num_classes=n_components,
        null_class=n_components,
        classifier=gmm.classifier_network(),
        metadata={"dim": dim, "n_components": n_components, "seed": seed, "gmm": gmm},
    )
