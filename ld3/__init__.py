"""ld3: fast, accurate sampling of pretrained diffusion models with learned time discretizations."""

from ld3.models.wrapper import data_prediction_fn, model_wrapper
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP

__version__ = "0.1.0"

__all__ = ["NoiseScheduleVP", "NoiseScheduleEDM", "model_wrapper", "data_prediction_fn", "TimeTuner", "__version__"]


def __getattr__(name: str):
    """Lazy exports (PEP 562): ``from ld3 import TimeTuner`` imports the learner only when asked for."""
    if name == "TimeTuner":
        from ld3.learners.timetuner import TimeTuner

        return TimeTuner
    raise AttributeError(f"module 'ld3' has no attribute {name!r}")


def _register_config_schemas() -> None:
    """Hydra structured configs of the learner and solver groups (``configs/`` builds on them)."""
    from ld3.config_schema import register

    register()


_register_config_schemas()
