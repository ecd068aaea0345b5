"""PFDiff: timestep skipping with past and future gradients (Wang et al. 2024, "PFDiff:
Training-free Acceleration of Diffusion Models through the Gradient Guidance of Past and Future",
arXiv 2408.08822, ICLR 2025; code: onefly123/PFDiff ``denoising_PFDiff_{k}_{h}.py`` for DDIM and
``dpm-solver/PFDiff_{k}_{h}.py`` for DPM-Solver).

Notation: Phi(x, s -> t, Q) is one update of the base solver from s to t that uses the model
outputs Q (for DDIM, Q = eps and Phi(x, s -> t, eps) = (alpha_t/alpha_s) x - sigma_t expm1(h) eps).
The fine grid t_0 > t_1 > ... > t_M is walked in blocks of k + 1 intervals (1 <= h <= k <= 3):

* Block 0 is one ordinary base step t_0 -> t_1; its outputs Q become the buffer.
* A block starting at t_i (i = 1, 1 + (k+1), ...) with buffer Q_past:

  ``base='ddim'`` (the paper's Algorithm for first-order solvers)
      springboard  x^ = Phi(x_i, t_i -> t_{i+h}, Q_past)          (past gradient, no NFE)
      future       Q  = eps(x^, t_{i+h})                         (1 NFE)
      jump         x_{i+k+1} = Phi(x_i, t_i -> t_{i+k+1}, Q)      (Nesterov-style look-ahead)

  ``base='dpm_solver_1'`` (the reference's default: ``dpm-solver/PFDiff_{k}_{h}.py`` with order 1)
      springboard  x^ = Phi(x_i, t_i -> t_{i+k+1-h}, Q_past)        (no NFE)
      x_{i+k+1} = Phi(x^, t_{i+k+1-h} -> t_{i+k+1}, Q), Q = eps(x^, t_{i+k+1-h})   (1 NFE; no jump from x_i)

  ``base='dpm_solver_2'`` (the same file with order 2; DPM-Solver-2 singlestep, noise prediction)
      springboard  x^ = DPM-Solver-2 update x_i, t_i -> t_{i+k+1-h} with the past outputs Q_past = (eps_s, eps_s1)
                   and this interval's r1 (no NFE)
      x_{i+k+1} = a fresh DPM-Solver-2 step from x^ at t_{i+k+1-h} (2 NFE: at t_{i+k+1-h} and at its
                  intermediate point s1); its two outputs become Q.
      The update is eps_s + (eps_s1 - eps_s) / (2 r1), r1 = (lambda(s1) - lambda_s) / h. ``midpoint``
      chooses s1 as the reference's ``get_time_steps(skip_type, s, t, N=2)[1]``: ``logSNR`` (r1 = 1/2,
      the update is eps_s1 alone), ``time_uniform`` (s1 = (s + t)/2) or ``time_quadratic``
      (sqrt s1 = (sqrt s + sqrt t)/2). The reference leaves the look-ahead jump from x_i commented
      out on these paths; the springboard's error then is not corrected, so they converge at
      first order in the step size (see docs/solvers.md), while DDIM's look-ahead is second order
      when 2h = k + 1 (the future gradient sits at the log-SNR midpoint of the block).

NFE <-> grid (as the paper counts it): with a base of p evaluations per step (p = 1 for DDIM and DPM-Solver-1, 2 for
DPM-Solver-2), N NFE are N / p blocks, i.e. M = (k+1)(N/p) - k fine intervals and
``len(timesteps) = (k+1)(N/p) - k + 1`` points (t_max ... t_min). The reference's scripts pass
``--timesteps (k+1)N - k`` (DDIM: N = 4 -> 10 for k = 2): that many model times, to which DDIM's
loop appends the clean end; here the last point t_min is explicit, hence the + 1. Grids of other
lengths are rejected (no partial blocks), and for p = 2 the NFE must be even.

Decoupled time: the network sees ``model_timesteps`` at grid points; at a DPM-Solver-2 point s1 it
sees the ``midpoint`` rule applied to the model times (equal to s1 when ``model_timesteps == timesteps``).
"""

from __future__ import annotations

from typing import Any, List

import torch

from ld3.solvers.base import ModelFn, Solver, StepHook, register_solver
from ld3.solvers.common import check_choice, check_int_range, grid_quantities, per_sample, split, threshold_noise


@register_solver("pfdiff")
class PFDiff(Solver):
    """PFDiff-k_h on a first-order (``ddim``) or second-order (``dpm_solver_2``) base.

    Options:
        k: 1..3, the block spans k + 1 fine intervals (default 1).
        h: 1..k, position of the future gradient (default 1).
        base: ``'ddim'`` (default), ``'dpm_solver_1'`` (the reference's default) or ``'dpm_solver_2'``.
        midpoint: ``'logSNR'`` (default), ``'time_uniform'`` or ``'time_quadratic'``: the intermediate
            point of the DPM-Solver-2 steps (the reference takes it from its ``skip_type``).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen thresholding of each
            fresh evaluation's data prediction.
    """

    BASES = {"ddim": 1, "dpm_solver_1": 1, "dpm_solver_2": 2}
    # intermediate time s1 of a DPM-Solver-2 step from t_a to t_b (t_a > t_b); logSNR is handled apart (r1 = 1/2)
    MIDPOINTS = {
        "logSNR": None,
        "time_uniform": lambda a, b: 0.5 * (a + b),
        "time_quadratic": lambda a, b: (0.5 * (a.sqrt() + b.sqrt())) ** 2,
    }

    def __init__(
        self,
        noise_schedule,
        k: int = 1,
        h: int = 1,
        base: str = "ddim",
        midpoint: str = "logSNR",
        **options: Any,
    ) -> None:
        super().__init__(noise_schedule, **options)
        self.k = check_int_range("k", k, 1, 3)
        self.h = check_int_range("h", h, 1, self.k)
        check_choice("base", base, self.BASES)
        check_choice("midpoint", midpoint, self.MIDPOINTS)
        if midpoint != "logSNR" and base != "dpm_solver_2":
            raise ValueError(
                f"midpoint={midpoint!r} needs base='dpm_solver_2' (got base={base!r}); only DPM-Solver-2 steps "
                "have an intermediate point"
            )
        self.base = base
        self.midpoint = midpoint
        self.p = self.BASES[base]

    # ----------------------------------------------------------------- NFE <-> grid
    def nfe(self, num_timesteps: int) -> int:
        self.check_grid_length(num_timesteps)
        return self.p * ((num_timesteps - 2) // (self.k + 1) + 1)

    def num_timesteps(self, nfe: int) -> int:
        if nfe < self.p or nfe % self.p:
            raise ValueError(
                f"nfe={nfe} is not possible for pfdiff with base={self.base!r}: each block costs {self.p} "
                f"evaluation(s), so nfe must be a positive multiple of {self.p}"
            )
        blocks = nfe // self.p
        return (self.k + 1) * blocks - self.k + 1

    def check_grid_length(self, n: int) -> None:
        if n < 2 or (n - 2) % (self.k + 1):
            raise ValueError(
                f"timesteps has length {n}; pfdiff with k={self.k} needs (k+1)B - k + 1 points for B blocks "
                f"(2, {self.k + 3}, {2 * self.k + 4}, ...)"
            )

    # ----------------------------------------------------------------- sampling
    def _blocks(self, n: int) -> List[tuple]:
        """(start, springboard, end) grid indices of the blocks after block 0."""
        k, h = self.k, self.h
        spring = h if self.base == "ddim" else k + 1 - h
        return [(i, i + spring, i + k + 1) for i in range(1, n - 1, k + 1)]

    def _sample(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        model_timesteps: torch.Tensor,
        step_done: StepHook,
    ) -> torch.Tensor:
        ns = self.noise_schedule
        g = grid_quantities(ns, timesteps)
        log_alpha = torch.log(g.alpha)
        batch = x.shape[0]
        t_in = per_sample(model_timesteps, batch)
        thr = self.thresholding if self.thresholding.thresholding else None
        blocks = self._blocks(timesteps.numel())
        dev = timesteps.device

        def ddim_coefficients(a_idx: List[int], b_idx: List[int]):
            """Vectorized Phi(x, t_a -> t_b, eps) = ratio x + coef eps for lists of grid indices."""
            a = torch.tensor(a_idx, device=dev)
            b = torch.tensor(b_idx, device=dev)
            ratio = torch.exp(log_alpha[b] - log_alpha[a])
            coef = -g.sigma[b] * torch.expm1(g.lam[b] - g.lam[a])
            return split(ratio, x), split(coef, x)

        def evaluate(x_s, t_vec, a_s, s_s):
            eps = model_fn(x_s, t_vec)
            return threshold_noise(eps, x_s, a_s, s_s, thr) if thr is not None else eps

        def emit(idx: int, x_new):
            if step_done is not None:
                step_done(idx, x_new)

        alpha, sigma = g.alpha.unbind(0), g.sigma.unbind(0)
        starts = [0] + [blk[0] for blk in blocks]
        springs = [1] + [blk[1] for blk in blocks]
        ends = [1] + [blk[2] for blk in blocks]
        if self.base == "ddim":
            # block 0: an ordinary DDIM step 0 -> 1; then springboard (past eps) and look-ahead jump (future eps)
            sp_r, sp_c = ddim_coefficients(starts, springs)
            jp_r, jp_c = ddim_coefficients(starts, ends)
            q = evaluate(x, t_in[0], alpha[0], sigma[0])
            x = (jp_r[0] * x).addcmul_(jp_c[0], q)
            emit(1, x)
            for j, (_i, sp, end) in enumerate(blocks, start=1):
                spring = (sp_r[j] * x).addcmul_(sp_c[j], q)  # past gradient
                q = evaluate(spring, t_in[sp], alpha[sp], sigma[sp])  # future gradient
                x = (jp_r[j] * x).addcmul_(jp_c[j], q)  # jump from x_i
                emit(end, x)
            return x

        # DPM-Solver-1/2 base: fresh steps go from the springboard (block 0: from t_0) to the block end
        fresh_a = [0] + springs[1:]
        sp_r, sp_c = ddim_coefficients(starts[1:], springs[1:]) if blocks else ((), ())
        st_r, st_c = ddim_coefficients(fresh_a, ends)
        fa = torch.tensor(fresh_a, device=dev)
        fb = torch.tensor(ends, device=dev)

        if self.p == 1:  # the reference's default (dpm-solver/PFDiff_*.py with order 1)

            def fresh1(j: int, x_s, a: int):
                eps_a = evaluate(x_s, t_in[a], alpha[a], sigma[a])
                return (st_r[j] * x_s).addcmul_(st_c[j], eps_a), eps_a

            x, q = fresh1(0, x, 0)
            emit(1, x)
            for j, (_i, sp, end) in enumerate(blocks, start=1):
                spring = (sp_r[j - 1] * x).addcmul_(sp_c[j - 1], q)  # past gradient
                x, q = fresh1(j, spring, sp)
                emit(end, x)
            return x

        # DPM-Solver-2: intermediate point s1 of each fresh step [a, b] and of each springboard interval
        t_mid, r1 = self._midpoints(ns, timesteps[fa], timesteps[fb], g.lam[fa], g.lam[fb])
        lam_mid = ns.marginal_lambda(t_mid, check=False) if r1 is not None else 0.5 * (g.lam[fa] + g.lam[fb])
        if r1 is None:  # log-SNR midpoint: s1 from lambda (bit-identical to the plain DPM-Solver-2 path)
            t_mid = ns.inverse_lambda(lam_mid)
        la_mid = ns.marginal_log_mean_coeff(t_mid, check=False)
        s_mid = ns.marginal_std(t_mid, check=False)
        mid_r = split(torch.exp(la_mid - log_alpha[fa]), x)
        mid_c = split(-s_mid * torch.expm1(lam_mid - g.lam[fa]), x)
        a_mid, s_mid_l = torch.exp(la_mid).unbind(0), s_mid.unbind(0)
        t_mid_model = per_sample(self._model_midpoints(ns, model_timesteps[fa], model_timesteps[fb]), batch)
        if r1 is not None:
            # 'dpmsolver' second-order update: eps_a + (eps_s1 - eps_a) / (2 r1) (= eps_s1 when r1 = 1/2)
            w_st = split(0.5 / r1, x)
            sa = torch.tensor(starts[1:], dtype=torch.long, device=dev)
            sb = torch.tensor(springs[1:], dtype=torch.long, device=dev)
            _, r1_sp = self._midpoints(ns, timesteps[sa], timesteps[sb], g.lam[sa], g.lam[sb])
            w_sp = split(0.5 / r1_sp, x) if blocks else ()

        def combine(w, e_a, e_mid):
            return e_a + w * (e_mid - e_a)

        def fresh(j: int, x_s, a: int):
            eps_a = evaluate(x_s, t_in[a], alpha[a], sigma[a])
            x_mid = (mid_r[j] * x_s).addcmul_(mid_c[j], eps_a)
            eps_mid = evaluate(x_mid, t_mid_model[j], a_mid[j], s_mid_l[j])
            if r1 is None:
                return (st_r[j] * x_s).addcmul_(st_c[j], eps_mid), eps_mid
            return (st_r[j] * x_s).addcmul_(st_c[j], combine(w_st[j], eps_a, eps_mid)), (eps_a, eps_mid)

        x, q = fresh(0, x, 0)
        emit(1, x)
        for j, (_i, sp, end) in enumerate(blocks, start=1):
            # past gradient(s): the previous fresh step's outputs, combined with this interval's r1
            past = q if r1 is None else combine(w_sp[j - 1], *q)
            spring = (sp_r[j - 1] * x).addcmul_(sp_c[j - 1], past)
            x, q = fresh(j, spring, sp)
            emit(end, x)
        return x

    def _midpoints(self, ns, t_a, t_b, lam_a, lam_b):
        """(t_s1, r1) of the intervals [t_a, t_b] under ``self.midpoint``; (None, None) for logSNR (r1 = 1/2)."""
        if self.midpoint == "logSNR":
            return None, None
        t_mid = self.MIDPOINTS[self.midpoint](t_a, t_b)
        r1 = (ns.marginal_lambda(t_mid, check=False) - lam_a) / (lam_b - lam_a)
        return t_mid, r1

    def _model_midpoints(self, ns, m_a, m_b):
        """The network time at s1: the same midpoint rule applied to the model times."""
        if self.midpoint == "logSNR":
            lam = ns.marginal_lambda(torch.stack([m_a, m_b]), check=False)
            return ns.inverse_lambda(0.5 * (lam[0] + lam[1]))
        return self.MIDPOINTS[self.midpoint](m_a, m_b)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "k": self.k,
            "h": self.h,
            "base": self.base,
            "midpoint": self.midpoint,
            **self.thresholding.describe(),
        }
