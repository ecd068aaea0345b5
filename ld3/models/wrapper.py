"""Turn any diffusion network into one continuous-time noise-prediction function.

Follows the interface of DPM-Solver's ``model_wrapper`` (Lu et al. 2022, App. D;
LuChengTHU/dpm-solver) and TimeTuner's extension with ``cond_process_fn``
(THU-LYJ-Lab/time-tuner). Conversions between parameterizations, with x_t = alpha_t x_0 + sigma_t eps:

* ``noise``:   eps = model output
* ``x_start``: eps = (x_t - alpha_t x_0) / sigma_t
* ``v``:       eps = (alpha_t v + sigma_t x_t) / (alpha_t^2 + sigma_t^2)   (v = alpha_t eps - sigma_t x_0;
               the denominator is 1 for VP schedules)
* ``score``:   eps = -sigma_t * score

Guidance:

* ``uncond``: eps(x, t)
* ``classifier`` (Dhariwal & Nichol 2021): eps(x, t) - s * sigma_t * grad_x log p(y | x_t)
* ``classifier-free`` (Ho & Salimans 2022): eps_u + s (eps_c - eps_u), one doubled batch.

The returned function is ``model_fn(x, t, condition=None, unconditional_condition=None)``; ``t`` is the
continuous time (scalar or one per sample). The network receives ``model_time_input(t)``: for
discrete-time VP models (t - 1/N) * 1000, otherwise t itself (sigma for EDM models).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch

from ld3.schedules import NoiseSchedule

MODEL_TYPES = ("noise", "x_start", "v", "score")
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")

ModelFn = Callable[..., torch.Tensor]


def model_time_input(noise_schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Continuous time -> the time a network was trained with (the schedule's convention,
    :meth:`ld3.schedules.NoiseSchedule.model_time_input`; (t - 1/N) * 1000 for discrete VP models)."""
    return noise_schedule.model_time_input(t)


def inverse_model_time_input(noise_schedule: NoiseSchedule, t_input: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`model_time_input`."""
    return noise_schedule.inverse_model_time_input(t_input)


def _expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) to broadcast against x (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _per_sample_time(t: Any, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.to(x.dtype)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    elif t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def model_wrapper(
    model: Callable[..., torch.Tensor],
    noise_schedule: NoiseSchedule,
    model_type: str = "noise",
    model_kwargs: Optional[Mapping[str, Any]] = None,
    guidance_type: str = "uncond",
    condition: Any = None,
    unconditional_condition: Any = None,
    guidance_scale: float = 1.0,
    classifier_fn: Optional[Callable[..., torch.Tensor]] = None,
    classifier_kwargs: Optional[Mapping[str, Any]] = None,
    cond_process_fn: Optional[Callable[[Any], Any]] = None,
) -> ModelFn:
    """Wrap ``model`` into a continuous-time noise-prediction function.

    ``model`` is called as ``model(x, t_input, **model_kwargs)`` without a condition and as
    ``model(x, t_input, cond, **model_kwargs)`` with one. ``classifier_fn(x, t_input, cond,
    **classifier_kwargs)`` returns log p(cond | x_t) per sample. ``cond_process_fn`` maps a raw
    condition (labels, prompts) to what the model takes (e.g. LDM's learned conditioning) and is
    applied once per call. ``condition`` / ``unconditional_condition`` given here are defaults that a
    call may override. For ``classifier`` guidance the model is called with
    ``unconditional_condition`` when one is given (a null class), else without a condition.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported; allowed values: {list(MODEL_TYPES)}")
    if guidance_type not in GUIDANCE_TYPES:
        raise ValueError(
            f"guidance_type={guidance_type!r} is not supported; allowed values: {list(GUIDANCE_TYPES)}"
        )
    if guidance_type == "classifier" and classifier_fn is None:
        raise ValueError("guidance_type='classifier' needs classifier_fn")
    model_kwargs = dict(model_kwargs or {})
    classifier_kwargs = dict(classifier_kwargs or {})
    ns = noise_schedule
    default_cond, default_uncond = condition, unconditional_condition

    def to_noise(out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if model_type == "noise":
            return out
        alpha = _expand_like(ns.marginal_alpha(t, check=False), x).to(x.dtype)
        sigma = _expand_like(ns.marginal_std(t, check=False), x).to(x.dtype)
        if model_type == "x_start":
            return (x - alpha * out) / sigma
        if model_type == "v":
            # v = alpha eps - sigma x0 and x = alpha x0 + sigma eps give alpha v + sigma x = (alpha^2 + sigma^2) eps
            return (alpha * out + sigma * x) / (alpha**2 + sigma**2)
        return -sigma * out  # score

    def call_model(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t_in = ns.model_time_input(t)
        if cond is None:
            out = model(x, t_in, **model_kwargs)
        else:
            out = model(x, t_in, cond, **model_kwargs)
        return to_noise(out, x, t)

    def process(cond: Any) -> Any:
        if cond is None or cond_process_fn is None:
            return cond
        return cond_process_fn(cond)

    def cond_grad(x: torch.Tensor, t_in: torch.Tensor, cond: Any) -> torch.Tensor:
        """grad_x log p(cond | x_t), differentiable further when x is part of a graph."""
        keep_graph = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            x_in = x if keep_graph else x.detach().requires_grad_(True)
            log_prob = classifier_fn(x_in, t_in, cond, **classifier_kwargs)
            (grad,) = torch.autograd.grad(log_prob.sum(), x_in, create_graph=keep_graph)
        return grad

    def model_fn(x: torch.Tensor, t: Any, condition: Any = None, unconditional_condition: Any = None) -> torch.Tensor:
        t = _per_sample_time(t, x)
        cond = process(default_cond if condition is None else condition)
        uncond = process(default_uncond if unconditional_condition is None else unconditional_condition)
        if guidance_type == "uncond":
            return call_model(x, t, cond)
        if guidance_type == "classifier":
            if cond is None:
                raise ValueError("classifier guidance needs a condition (the target labels)")
            eps = call_model(x, t, uncond)
            sigma = _expand_like(ns.marginal_std(t, check=False), x).to(x.dtype)
            return eps - guidance_scale * sigma * cond_grad(x, ns.model_time_input(t), cond)
        # classifier-free
        if cond is None or uncond is None:
            raise ValueError("classifier-free guidance needs both condition and unconditional_condition")
        if guidance_scale == 1.0:
            return call_model(x, t, cond)
        x_in = torch.cat([x, x])
        t_in = torch.cat([t, t])
        if isinstance(cond, torch.Tensor):
            c_in = torch.cat([uncond, cond])
        elif isinstance(cond, dict):
            c_in = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        else:
            raise ValueError(f"condition of type {type(cond).__name__} cannot be batched; use a tensor or dict")
        eps_u, eps_c = call_model(x_in, t_in, c_in).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    model_fn.noise_schedule = ns  # type: ignore[attr-defined]
    model_fn.model_type = model_type  # type: ignore[attr-defined]
    model_fn.guidance_type = guidance_type  # type: ignore[attr-defined]
    return model_fn


def noise_to_data(x: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sigma_t eps) / alpha_t, with alpha_t, sigma_t scalars or per-sample vectors."""
    if alpha_t.dim() > 0:
        alpha_t, sigma_t = _expand_like(alpha_t, x), _expand_like(sigma_t, x)
    return (x - sigma_t * eps) / alpha_t


def data_prediction_fn(model_fn: ModelFn, noise_schedule: NoiseSchedule) -> ModelFn:
    """Wrap a noise-prediction ``model_fn`` into x0_pred(x, t, **kw) = (x - sigma_t eps) / alpha_t."""

    def x0_fn(x: torch.Tensor, t: Any, **kwargs: Any) -> torch.Tensor:
        t = _per_sample_time(t, x)
        eps = model_fn(x, t, **kwargs)
        alpha = noise_schedule.marginal_alpha(t, check=False).to(x.dtype)
        sigma = noise_schedule.marginal_std(t, check=False).to(x.dtype)
        return noise_to_data(x, eps, alpha, sigma)

    return x0_fn
