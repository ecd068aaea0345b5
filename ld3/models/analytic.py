"""Exact denoisers of Gaussian and Gaussian-mixture data: the ground truth for tests and benchmarks.

For data x_0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha_t x_0 + sigma_t n, the marginal is
p_t(x) = sum_k w_k N(x; alpha_t mu_k, C_k), C_k = alpha_t^2 Sigma_k + sigma_t^2 I, so

    score(x, t)  = sum_k r_k(x) [-C_k^{-1} (x - alpha_t mu_k)],   r_k = posterior of component k
    eps(x, t)    = -sigma_t score(x, t)
    x0(x, t)     = (x + sigma_t^2 score) / alpha_t                (Tweedie)
    log p(y|x_t) = log w_y + log N_y(x) - logsumexp_k(log w_k + log N_k(x)).

Covariances are stored by eigendecomposition Sigma_k = U_k diag(s_k) U_k^T, so every inverse and
determinant is exact. Conditioning on a label y picks component y; label K is the "null" label
(unconditional), mirroring a class-conditional network with a null class for classifier-free guidance.

Probability-flow ODE reference: with y = x / alpha and the EDM noise level s~ = sigma / alpha the ODE
is dy/ds~ = eps = -s~ grad_y log p(y; s~), where p(y; s~) = sum_k w_k N(mu_k, Sigma_k + s~^2 I) does
not depend on the schedule (Karras et al. 2022, Eq. 4; Lu et al. 2022, Eq. 3.4). For one Gaussian it
has the closed form y(s~) = mu + U diag(sqrt((s + s~^2) / (s + s~_0^2))) U^T (y_0 - mu); for mixtures
we integrate it with ``scipy.integrate.solve_ivp`` (DOP853, float64, rtol 1e-11) in log s~.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ld3.models.wrapper import MODEL_TYPES, inverse_model_time_input
from ld3.schedules import NoiseSchedule

Labels = Optional[Union[torch.Tensor, int]]


class AnalyticGMM:
    """A Gaussian mixture with exact denoisers under any :class:`~ld3.schedules.NoiseSchedule`.

    Args:
        means: (K, D) component means.
        covs: (K, D, D) full covariances, (K, D) diagonal variances, or a float (isotropic, shared).
        weights: (K,) mixture weights (normalized here); uniform by default.
        noise_schedule: the schedule that maps t to (alpha_t, sigma_t).
        dtype: float64 by default (tests compare to 1e-6 and better).
    """

    def __init__(
        self,
        means: Union[torch.Tensor, Sequence],
        covs: Union[torch.Tensor, Sequence, float],
        noise_schedule: NoiseSchedule,
        weights: Optional[Union[torch.Tensor, Sequence]] = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        K, D = self.means.shape
        self.K, self.D, self.dtype = K, D, dtype
        self.noise_schedule = noise_schedule
        w = torch.full((K,), 1.0 / K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers, got {w.tolist()}")
        self.weights = w / w.sum()
        self.log_weights = torch.log(self.weights)
        covs_t = torch.as_tensor(covs, dtype=dtype)
        if covs_t.dim() == 0:
            covs_t = covs_t.expand(K, D).clone()
        if covs_t.dim() == 2:
            if covs_t.shape != (K, D) or (covs_t <= 0).any():
                raise ValueError(f"diagonal covs must be positive with shape ({K}, {D})")
            self.diagonal = True
            self.eigvals = covs_t
            self.eigvecs = None
        elif covs_t.dim() == 3:
            if covs_t.shape != (K, D, D):
                raise ValueError(f"full covs must have shape ({K}, {D}, {D}), got {tuple(covs_t.shape)}")
            sym = 0.5 * (covs_t + covs_t.transpose(-1, -2))
            evals, evecs = torch.linalg.eigh(sym)
            if (evals <= 0).any():
                raise ValueError("covariances must be positive definite")
            self.diagonal = False
            self.eigvals, self.eigvecs = evals, evecs
        else:
            raise ValueError(f"covs has unsupported shape {tuple(covs_t.shape)}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        noise_schedule: NoiseSchedule,
        dim: int = 16,
        n_components: int = 4,
        seed: int = 0,
        diagonal: bool = False,
        mean_scale: float = 1.0,
        var_range: tuple = (0.01, 0.25),
        dtype: torch.dtype = torch.float64,
    ) -> "AnalyticGMM":
        """A reproducible random mixture with eigenvalues of each covariance in ``var_range``."""
        g = torch.Generator().manual_seed(seed)
        means = mean_scale * torch.randn(n_components, dim, generator=g, dtype=dtype) / math.sqrt(dim) * 2
        lo, hi = var_range
        evals = lo + (hi - lo) * torch.rand(n_components, dim, generator=g, dtype=dtype)
        if diagonal:
            covs = evals
        else:
            q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=dtype))
            covs = q @ torch.diag_embed(evals) @ q.transpose(-1, -2)
        weights = 0.5 + torch.rand(n_components, generator=g, dtype=dtype)
        return cls(means, covs, noise_schedule, weights=weights, dtype=dtype)

    # ------------------------------------------------------------------ helpers
    def _alpha_sigma(self, t: Any, x: torch.Tensor) -> tuple:
        t = torch.as_tensor(t, dtype=self.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        ns = self.noise_schedule
        return ns.marginal_alpha(t, check=False).to(self.dtype), ns.marginal_std(t, check=False).to(self.dtype)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.D and x[0].numel() != self.D:
            raise ValueError(f"x has {x[0].numel()} features per sample, the model has D={self.D}")
        return x.reshape(x.shape[0], self.D).to(self.dtype)

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> coordinates in each component's eigenbasis."""
        if self.diagonal:
            return v
        return torch.einsum("kde,bkd->bke", self.eigvecs.to(v.device), v)

    def _unproject(self, z: torch.Tensor) -> torch.Tensor:
        if self.diagonal:
            return z
        return torch.einsum("kde,bke->bkd", self.eigvecs.to(z.device), z)

    def _components(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y: Labels):
        """Per-component log densities (B, K) and scores (B, K, D) of x_t, plus log weights (B, K)."""
        xf = self._flat(x)
        a = alpha.reshape(-1, 1, 1)
        s2 = (sigma**2).reshape(-1, 1, 1)
        diff = xf[:, None, :] - a * self.means.to(xf.device)[None]  # (B, K, D)
        var = a**2 * self.eigvals.to(xf.device)[None] + s2  # (B, K, D)
        z = self._project(diff)
        logn = -0.5 * ((z**2 / var).sum(-1) + torch.log(var).sum(-1) + self.D * math.log(2 * math.pi))
        scores = -self._unproject(z / var)
        logw = self.log_weights.to(xf.device)[None].expand(xf.shape[0], -1)
        if y is not None:
            y = torch.as_tensor(y, device=xf.device).long()
            if y.dim() == 0:
                y = y.expand(xf.shape[0])
            if ((y < 0) | (y > self.K)).any():
                raise ValueError(f"labels must be in [0, {self.K}] ({self.K} = null label), got {y.tolist()}")
            onehot = torch.nn.functional.one_hot(y.clamp(max=self.K - 1), self.K).to(self.dtype)
            cond_logw = torch.where(onehot > 0, torch.zeros_like(onehot), torch.full_like(onehot, -math.inf))
            logw = torch.where((y == self.K)[:, None], logw, cond_logw)
        return logn, scores, logw

    # ------------------------------------------------------------------ exact quantities
    def score(self, x: torch.Tensor, t: Any, y: Labels = None) -> torch.Tensor:
        """grad_x log p_t(x | y) (y = None or the null label: the marginal)."""
        alpha, sigma = self._alpha_sigma(t, x)
        logn, scores, logw = self._components(x, alpha, sigma, y)
        r = torch.softmax(logw + logn, dim=-1)
        return (r[..., None] * scores).sum(1).reshape(x.shape)

    def eps(self, x: torch.Tensor, t: Any, y: Labels = None) -> torch.Tensor:
        """Exact noise prediction E[n | x_t] = -sigma_t score."""
        _, sigma = self._alpha_sigma(t, x)
        return -sigma.reshape((-1,) + (1,) * (x.dim() - 1)) * self.score(x, t, y)

    def x0(self, x: torch.Tensor, t: Any, y: Labels = None) -> torch.Tensor:
        """Exact denoiser E[x_0 | x_t] = (x + sigma^2 score) / alpha."""
        alpha, sigma = self._alpha_sigma(t, x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x.to(self.dtype) + sigma.reshape(shape) ** 2 * self.score(x, t, y)) / alpha.reshape(shape)

    def v(self, x: torch.Tensor, t: Any, y: Labels = None) -> torch.Tensor:
        """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
        alpha, sigma = self._alpha_sigma(t, x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return alpha.reshape(shape) * self.eps(x, t, y) - sigma.reshape(shape) * self.x0(x, t, y)

    def classifier_log_prob(self, x: torch.Tensor, t: Any, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t), per sample (differentiable in x)."""
        alpha, sigma = self._alpha_sigma(t, x)
        logn, _, logw = self._components(x, alpha, sigma, None)
        joint = logw + logn
        y = torch.as_tensor(y, device=x.device).long().expand(x.shape[0])
        return joint.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(joint, dim=1)

    def classifier_grad(self, x: torch.Tensor, t: Any, y: torch.Tensor) -> torch.Tensor:
        """Closed form grad_x log p(y | x_t) = score(x | y) - score(x)."""
        return self.score(x, t, y) - self.score(x, t, None)

    # ------------------------------------------------------------------ as a network
    def network(self, model_type: str = "noise") -> Callable[..., torch.Tensor]:
        """A callable ``net(x, t_input, cond=None)`` shaped like a trained network of ``model_type``.

        ``t_input`` is the network's time (see :func:`ld3.models.wrapper.model_time_input`), so the
        result plugs into :func:`ld3.models.wrapper.model_wrapper` like any real model.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r} is not supported; allowed values: {list(MODEL_TYPES)}")
        fn = {"noise": self.eps, "x_start": self.x0, "v": self.v, "score": self.score}[model_type]

        def net(x: torch.Tensor, t_input: torch.Tensor, cond: Labels = None) -> torch.Tensor:
            t = inverse_model_time_input(self.noise_schedule, torch.as_tensor(t_input, dtype=self.dtype))
            return fn(x, t, cond).to(x.dtype)

        return net

    def classifier_network(self) -> Callable[..., torch.Tensor]:
        """``classifier_fn(x, t_input, y)`` = log p(y | x_t), for classifier guidance."""

        def clf(x: torch.Tensor, t_input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = inverse_model_time_input(self.noise_schedule, torch.as_tensor(t_input, dtype=self.dtype))
            return self.classifier_log_prob(x, t, y)

        return clf

    # ------------------------------------------------------------------ data and ODE
    def sample_data(self, n: int, generator: Optional[torch.Generator] = None, y: Labels = None) -> torch.Tensor:
        """Draw n samples of x_0 (optionally all from component y)."""
        if y is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            comp = torch.as_tensor(y).long().expand(n)
        z = torch.randn(n, self.D, generator=generator, dtype=self.dtype)
        z = z * self.eigvals[comp].sqrt()
        if not self.diagonal:
            z = torch.einsum("nde,ne->nd", self.eigvecs[comp], z)
        return self.means[comp] + z

    def _edm_sigma(self, t: Any) -> float:
        return float(self.noise_schedule.edm_sigma(torch.as_tensor(t, dtype=torch.float64)))

    def _alpha(self, t: Any) -> float:
        return float(self.noise_schedule.marginal_alpha(torch.as_tensor(t, dtype=torch.float64)))

    def ode_solution(
        self,
        x_start: torch.Tensor,
        t_start: float,
        t_end: float,
        y: Labels = None,
        rtol: float = 1e-11,
        atol: float = 1e-12,
        method: Optional[str] = None,
    ) -> torch.Tensor:
        """Exact (one Gaussian, or a given label) or high-accuracy (mixture) solution of the PF-ODE.

        Transports ``x_start`` at time ``t_start`` to ``t_end``. ``method='closed_form'`` or
        ``'solve_ivp'`` forces one; by default the closed form is used when it applies.
        """
        single = self.K == 1 or (y is not None and not bool((torch.as_tensor(y) == self.K).any()))
        method = method or ("closed_form" if single else "solve_ivp")
        if method == "closed_form" and not single:
            raise ValueError("the closed-form solution applies to one Gaussian (K=1 or a given label)")
        s0, s1 = self._edm_sigma(t_start), self._edm_sigma(t_end)
        a0, a1 = self._alpha(t_start), self._alpha(t_end)
        y0 = self._flat(x_start.detach()).to(torch.float64) / a0
        if method == "closed_form":
            n = y0.shape[0]
            comp = torch.zeros(n, dtype=torch.long) if self.K == 1 else torch.as_tensor(y).long().expand(n)
            mu = self.means[comp].to(torch.float64)
            ev = self.eigvals[comp].to(torch.float64)
            scale = torch.sqrt((ev + s1**2) / (ev + s0**2))
            d = y0 - mu
            if self.diagonal:
                y1 = mu + scale * d
            else:
                U = self.eigvecs[comp].to(torch.float64)
                y1 = mu + torch.einsum("nde,ne->nd", U, scale * torch.einsum("nde,nd->ne", U, d))
            return (a1 * y1).reshape(x_start.shape).to(x_start.dtype)
        if method != "solve_ivp":
            raise ValueError(f"method={method!r}; allowed: 'closed_form', 'solve_ivp'")
        from scipy.integrate import solve_ivp

        shape = y0.shape
        edm = _EDMView(self, y)

        def rhs(u: float, state: np.ndarray) -> np.ndarray:
            s = math.exp(u)
            yy = torch.from_numpy(state).reshape(shape)
            # dy/du = s * dy/ds = s * eps = -s^2 grad log p(y; s)
            return (-(s**2) * edm.score(yy, s)).reshape(-1).numpy()

        span = (math.log(s0), math.log(s1))
        sol = solve_ivp(rhs, span, y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        y1 = torch.from_numpy(sol.y[:, -1]).reshape(shape)
        return (a1 * y1).reshape(x_start.shape).to(x_start.dtype)


class _EDMView:
    """The mixture seen in EDM coordinates: p(y; s) = sum_k w_k N(mu_k, Sigma_k + s^2 I)."""

    def __init__(self, gmm: AnalyticGMM, y: Labels) -> None:
        self.gmm, self.y = gmm, y

    def score(self, yy: torch.Tensor, s: float) -> torch.Tensor:
        one = torch.ones(yy.shape[0], dtype=torch.float64)
        logn, scores, logw = self.gmm._components(yy, one, s * one, self.y)
        r = torch.softmax(logw + logn, dim=-1)
        return (r[..., None] * scores).sum(1)
