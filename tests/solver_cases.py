"""The table of solver configurations that parametrizes the common solver tests.

Every registered solver must appear here at least once (``test_every_registered_solver_has_a_case``).
Each case gives the options, the expected global convergence order on a logSNR-uniform grid (None:
not an ODE-order case, e.g. stochastic or thresholded) and the NFE values used for the log-log fit.

Fit windows (see docs/solvers.md, "Measuring convergence order"): the slope is fitted over the NFE
values listed in ``fit_nfe``. The default window (20..200) is in the asymptotic regime for the
low-order methods. Multistep methods with a lower-order warm-up and high-order methods are
pre-asymptotic below NFE ~100 on the test mixture (e.g. variable-step AB4: local slopes 2.8, 3.3,
3.7, 3.9 from NFE 25 to 800), so their window is NFE 100..400; the expected value is always the
theoretical order, never a measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

DEFAULT_FIT_NFE: Tuple[int, ...] = (20, 40, 80, 140, 200)
HIGH_ORDER_FIT_NFE: Tuple[int, ...] = (100, 200, 400)


@dataclass(frozen=True)
class SolverCase:
    """One solver configuration for the parametrized tests."""

    name: str
    options: Dict[str, Any] = field(default_factory=dict)
    #: expected global order on a logSNR-uniform grid; None skips the order test
    order: Optional[float] = None
    #: NFE values of the log-log fit (invalid ones are moved to the next valid NFE)
    fit_nfe: Tuple[int, ...] = DEFAULT_FIT_NFE
    note: str = ""

    @property
    def id(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}[{opts}]"


CASES = [
    # ------------------------------------------------------------------ solvers A (ddim, euler, heun, ipndm, pfdiff)
    SolverCase("ddim", {}, 1.0, note="DDIM = DPM-Solver-1"),
    SolverCase("ddim", {"eta": 0.5, "seed": 0}, None, note="stochastic: no ODE order"),
    SolverCase("ddim", {"thresholding": True, "sample_max_value": 1.5}, None, note="thresholding changes the ODE"),
    SolverCase("euler", {}, 1.0),
    SolverCase("heun", {}, 2.0, note="final step Euler (EDM Alg. 1), NFE 2N-1"),
    SolverCase("heun", {"final_step": "heun"}, 2.0, note="NFE 2N"),
    SolverCase("ipndm", {"order": 1}, 1.0),
    SolverCase("ipndm", {"order": 2}, 2.0),
    SolverCase("ipndm", {"order": 3}, 2.0,
               note="fixed AB3 coefficients assume equal steps in sigma~: order 2 on a logSNR grid"),
    SolverCase("ipndm", {"order": 4}, 2.0,
               note="fixed AB4 coefficients assume equal steps in sigma~: order 2 on a logSNR grid"),
    SolverCase("ipndm", {"order": 3, "variable_step": True}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("ipndm", {"order": 4, "variable_step": True}, 4.0, fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("pfdiff", {"k": 1, "h": 1}, 2.0, note="future gradient at the block's log-SNR midpoint"),
    SolverCase("pfdiff", {"k": 2, "h": 1}, 1.0),
    SolverCase("pfdiff", {"k": 2, "h": 2}, 1.0),
    SolverCase("pfdiff", {"k": 3, "h": 2}, 2.0, note="2h = k + 1: midpoint"),
    SolverCase("pfdiff", {"k": 3, "h": 3}, 1.0),
    SolverCase("pfdiff", {"k": 1, "h": 1, "base": "dpm_solver_2"}, 1.0,
               note="reference's higher-order path: uncorrected springboard, first order"),
    SolverCase("pfdiff", {"k": 2, "h": 1, "base": "dpm_solver_2"}, 1.0),
    # ------------------------------------------------------------------ solvers B (dpm_solver++, uni_pc, deis)
    # Append the cases of dpm_solver++, uni_pc and deis below this line.
    # dpm_solver++ 3M as written in the reference / diffusers weights D2 by phi_3 instead of 2 phi_3
    # and is second order (ld3/solvers/dpm_solver_pp.py); order3_form='consistent' is third order.
    # UniPC's lower_order_final ends with an uncorrected UniP-1 step (O(h^2) local, tiny constant near
    # t_min), so its order cases switch it off; its first (UniPC-1) warm-up step bounds order 3 at 3.
    SolverCase("dpm_solver++", {}, 2.0, note="2M midpoint (defaults)"),
    SolverCase("dpm_solver++", {"order": 1}, 1.0, note="= DDIM"),
    SolverCase("dpm_solver++", {"order": 2, "solver_type": "taylor"}, 2.0),
    SolverCase("dpm_solver++", {"order": 3}, 2.0, fit_nfe=HIGH_ORDER_FIT_NFE,
               note="reference 3M: D2 weighted by phi_3 instead of 2 phi_3, O(h^3) local error"),
    SolverCase("dpm_solver++", {"order": 3, "order3_form": "consistent"}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("dpm_solver++", {"order": 2, "method": "singlestep"}, 2.0),
    SolverCase("dpm_solver++", {"order": 3, "method": "singlestep"}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE,
               note="logSNR grid gives the reference's r1 = 1/3, r2 = 2/3"),
    SolverCase("dpm_solver++", {"order": 3, "method": "singlestep", "solver_type": "taylor"}, 3.0,
               fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("dpm_solver++", {"order": 2, "thresholding": True, "sample_max_value": 1.5}, None,
               note="thresholding changes the ODE"),
    SolverCase("uni_pc", {}, None, note="bh1, order 2, lower_order_final: asymptotically 2 (final UniP-1)"),
    SolverCase("uni_pc", {"order": 1}, 2.0, note="UniPC-1: UniP-1 + UniC-1"),
    SolverCase("uni_pc", {"order": 2, "lower_order_final": False}, 3.0),
    SolverCase("uni_pc", {"order": 2, "variant": "bh2", "lower_order_final": False}, 3.0,
               fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("uni_pc", {"order": 3, "lower_order_final": False}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE,
               note="p + 1 = 4 pre-asymptotically (slope ~4.0 over NFE 20-200); the UniPC-1 warm-up "
                    "step (O(h^3) local) bounds it at 3"),
    SolverCase("uni_pc", {"order": 2, "corrector": False}, 2.0, note="UniP-2 alone"),
    SolverCase("uni_pc", {"order": 3, "variant": "bh2", "thresholding": True, "sample_max_value": 1.5}, None,
               note="thresholding changes the ODE"),
    SolverCase("deis", {}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE, note="tAB, 3 points (defaults)"),
    SolverCase("deis", {"order": 1, "variant": "logrho"}, 1.0, note="= DDIM"),
    SolverCase("deis", {"order": 2, "variant": "logrho"}, 2.0),
    SolverCase("deis", {"order": 3, "variant": "logrho"}, 3.0, fit_nfe=HIGH_ORDER_FIT_NFE),
    SolverCase("deis", {"order": 2, "variant": "tab"}, 2.0),
    SolverCase("deis", {"order": 2, "variant": "logrho", "thresholding": True, "sample_max_value": 1.5}, None,
               note="thresholding changes the ODE"),
]
