"""Learners of time discretizations: LD3 (``ld3.learners.ld3``) and their losses (``ld3.learners.losses``)."""

from ld3.learners.ld3 import (
    LD3Config,
    LD3Data,
    LD3DivergenceError,
    LD3Parameterization,
    LD3Trainer,
    evaluate_grid,
    project_to_ball,
    resolve_hyper,
)
from ld3.learners.losses import MissingWeightsError, available_losses, get_loss, register_loss

__all__ = [
    "LD3Config",
    "LD3Data",
    "LD3DivergenceError",
    "LD3Parameterization",
    "LD3Trainer",
    "evaluate_grid",
    "project_to_ball",
    "resolve_hyper",
    "MissingWeightsError",
    "available_losses",
    "get_loss",
    "register_loss",
]
