"""ODE solvers for diffusion sampling, all differentiable with respect to their timesteps.

``get_solver(name, noise_schedule, **options)`` builds one; ``available()`` lists the names.
Solver modules register themselves on import (see ``ld3/solvers/base.py``).
"""

from ld3.solvers.base import Solver, available, get_solver, register_solver, validate_timesteps

__all__ = ["Solver", "available", "get_solver", "register_solver", "validate_timesteps"]
