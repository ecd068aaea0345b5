"""ld3: fast, accurate sampling of pretrained diffusion models with learned time discretizations."""

from ld3.models.wrapper import data_prediction_fn, model_wrapper
from ld3.schedules import NoiseScheduleEDM, NoiseScheduleVP

__version__ = "0.1.0"

__all__ = ["NoiseScheduleVP", "NoiseScheduleEDM", "model_wrapper", "data_prediction_fn", "__version__"]
