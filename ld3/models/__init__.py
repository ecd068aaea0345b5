"""Model wrappers, analytic ground-truth models and the model zoo."""

from ld3.models.analytic import AnalyticGMM
from ld3.models.wrapper import data_prediction_fn, model_time_input, model_wrapper

__all__ = ["AnalyticGMM", "model_wrapper", "data_prediction_fn", "model_time_input"]
