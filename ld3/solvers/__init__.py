"""ODE solvers for diffusion sampling, all differentiable with respect to their timesteps.

``get_solver(name, noise_schedule, **options)`` builds one; ``available()`` lists the names.
Solver modules register themselves on import (see ``ld3/solvers/base.py``): every module of this
package is imported here, so a new solver file only needs its ``@register_solver`` decorator.
"""

import importlib
import pkgutil

from ld3.solvers.base import Solver, available, get_solver, register_solver, validate_timesteps
from ld3.solvers.thresholding import ThresholdingOptions, dynamic_threshold

_NOT_SOLVERS = {"base", "thresholding", "common"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name in _NOT_SOLVERS:
        continue
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "Solver",
    "available",
    "get_solver",
    "register_solver",
    "validate_timesteps",
    "ThresholdingOptions",
    "dynamic_threshold",
]
