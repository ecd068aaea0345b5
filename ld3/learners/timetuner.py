"""TimeTuner: one tuned network time per sampling step (Xia et al., CVPR 2024).

"Towards More Accurate Diffusion Model Acceleration with A Timestep Tuner"; reference code
THU-LYJ-Lab/time-tuner ``time_tuner.py`` (read, not copied). With few sampling steps the noise
prediction eps(x_t, t) taken at the start of an interval [s, t] is an inaccurate integral direction
for the whole interval. TimeTuner keeps every solver coefficient at the grid time t_i but feeds the
network the time r_i * t_i, with one scalar ratio r_i per step:

    DDIM step t -> s:   eps   = eps_theta(x_t, r * t)
                        x0    = (x_t - sigma_t eps) / alpha_t
                        x_s   = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z,
                        std   = eta * sigma_s * sqrt(1 - exp(-2 (lambda_s - lambda_t)))

(eta = 0: deterministic DDIM; for VP schedules std equals DDIM's eta sqrt((1-a_s)/(1-a_t)) sqrt(1-a_t/a_s)).

The update is the DDIM solver's (:class:`ld3.solvers.ddim.DDIM`, which also checks eta):
:meth:`TimeTuner.ddim_sample` is ``DDIM.sample`` with ``model_timesteps = ratios * t`` (the solver's
decoupled network time), and a single step (:meth:`TimeTuner.ddim_step_fn`) uses
``DDIM.step_coefficients`` on [t, s].

Training (reference ``optimize_timesteps``): the ratios are tuned one step at a time, from the
noisiest step on; each starts at 1 and is trained with Adam (lr 2e-3, betas (0.9, 0.999)) for
``total_iters`` batches, minimising

    L(r_i) = E || eps(x_{t_i}, t_i) - eps(x~_{t_{i+1}}(r_i), t_{i+1}) ||^2,

x~_{t_{i+1}}(r_i) the step from x_{t_i} with ratio r_i, both eps at the untuned times, the first one
without gradient, the squared norm summed over a sample and averaged over the batch. The states
x_{t_i} come from data x_0 of the loader (``encode_fn`` maps images to latents first):

* ``parallel``: x_{t_i} = alpha_{t_i} x_0 + sigma_{t_i} z (every step independent of the others);
* ``sequential``: x_{t_0} = alpha_{t_0} x_0 + sigma_{t_0} z, then the already tuned steps 0..i-1.

The last step keeps ratio 1, so ``len(t_ratios) == num_steps``.

Default grid (the reference's ``get_timesteps``): for discrete-time VP models with N training steps,
step = N // num_steps and the network indices k_i = (num_steps - 1 - i) * step + 1, i.e.
{901, 801, ..., 1} for N = 1000 and 10 steps, at t_i = (k_i + 1) / N (so the untuned network input is
exactly k_i), plus the end point t = 1/N (index 0). Other schedules: time-uniform from T to eps.
``timesteps=`` overrides it with any descending continuous-time grid of num_steps + 1 points;
:func:`timesteps_from_indices` turns reference-style discrete indices into such a grid.

Differences from the reference (deliberate, see docs/timetuner.md): the device comes from the inputs
(or ``device=``), never a hard-coded CUDA; times stay float64; the default grid has exactly
``num_steps`` steps for every N (the reference's ``arange`` gives more when N % num_steps != 0);
``sequential`` starts from the marginal at the grid's first time (the reference noises to T but then
steps from t_0); the loader is cycled so each step sees exactly ``total_iters`` batches; a model
without a condition (``guidance_type='uncond'``) never receives labels; conditions with one row
are broadcast over the batch. ``ddim_sample`` is differentiable: wrap it in ``torch.no_grad()`` for
inference.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ld3.schedules import NoiseSchedule
from ld3.solvers.common import grid_quantities
from ld3.solvers.ddim import DDIM, check_eta

TUNE_TYPES = ("sequential", "parallel")
#: the reference's defaults (``time_tuner.py``: Adam lr 2e-3, betas (0.9, 0.999), 500 iterations)
DEFAULT_LR = 2e-3
DEFAULT_TOTAL_ITERS = 500
ADAM_BETAS = (0.9, 0.999)

TensorLike = Union[torch.Tensor, float, Sequence[float]]
StepFn = Callable[..., Any]


# ----------------------------------------------------------------------------- grids
def default_timesteps(noise_schedule: NoiseSchedule, num_steps: int) -> torch.Tensor:
    """The reference's grid of ``num_steps + 1`` times (float64, descending); see the module docstring."""
    num_steps = _check_num_steps(num_steps)
    if noise_schedule.discrete_steps is not None:
        n_train = int(noise_schedule.discrete_steps)
        if num_steps >= n_train:
            raise ValueError(
                f"num_steps={num_steps} is too large for a discrete schedule of {n_train} steps; "
                f"allowed: 1..{n_train - 1}"
            )
        stride = n_train // num_steps
        k = torch.arange(num_steps - 1, -1, -1, dtype=torch.float64) * stride + 1.0
        k = torch.cat([k, torch.zeros(1, dtype=torch.float64)])
        return (k + 1.0) / n_train
    return torch.linspace(float(noise_schedule.T), float(noise_schedule.eps), num_steps + 1, dtype=torch.float64)


def timesteps_from_indices(noise_schedule: NoiseSchedule, indices: TensorLike) -> torch.Tensor:
    """Reference-style discrete network indices (e.g. [901, 801, ..., 1]) -> a continuous grid.

    Index k is time (k + 1) / N; the end point 1 / N (index 0) is appended, as in the reference.
    """
    if noise_schedule.discrete_steps is None:
        raise ValueError(
            f"discrete indices need a discrete-time noise schedule, got {noise_schedule.kind!r}; "
            "pass continuous times with timesteps= instead"
        )
    k = torch.as_tensor(indices, dtype=torch.float64).detach().cpu().flatten()
    n_train = int(noise_schedule.discrete_steps)
    if k.numel() < 1 or not torch.isfinite(k).all() or (k < 1).any() or (k > n_train - 1).any():
        raise ValueError(f"indices must be numbers in [1, {n_train - 1}], got {k.tolist()}")
    return torch.cat([(k + 1.0) / n_train, torch.tensor([1.0 / n_train], dtype=torch.float64)])


def check_timesteps(noise_schedule: NoiseSchedule, timesteps: TensorLike, num_steps: int | None = None) -> torch.Tensor:
    """Validate a continuous-time grid: 1-D, >= 2 points, finite, strictly descending, inside [eps, T]."""
    ts = timesteps.detach().to(torch.float64) if isinstance(timesteps, torch.Tensor) else timesteps
    return noise_schedule.check_grid(ts, "timesteps", None if num_steps is None else num_steps + 1)


def check_ratios(t_ratios: TensorLike, num_steps: int) -> torch.Tensor:
    """Validate one positive, finite ratio per step (keeps the autograd graph of a tensor)."""
    r = t_ratios if isinstance(t_ratios, torch.Tensor) else torch.as_tensor(t_ratios, dtype=torch.float64)
    if r.dim() != 1 or r.numel() != num_steps:
        raise ValueError(f"t_ratios must hold one ratio per step ({num_steps}), got shape {tuple(r.shape)}")
    rd = r.detach()
    if not torch.isfinite(rd).all() or (rd <= 0).any():
        raise ValueError(f"t_ratios must be finite and > 0, got {rd.tolist()}")
    return r


def tuned_model_timesteps(timesteps: torch.Tensor, t_ratios: torch.Tensor) -> torch.Tensor:
    """Network times r_i * t_i at the grid points that start a step; the end point keeps its time."""
    if t_ratios.numel() != timesteps.numel() - 1:
        raise ValueError(f"t_ratios has {t_ratios.numel()} values, a grid of {timesteps.numel()} points needs "
                         f"{timesteps.numel() - 1}")
    r = t_ratios.to(device=timesteps.device, dtype=timesteps.dtype)
    return torch.cat([r * timesteps[:-1], timesteps[-1:]])


def ratios_from_discretization(timesteps: TensorLike, model_timesteps: TensorLike) -> torch.Tensor:
    """Inverse of :func:`tuned_model_timesteps`: r_i = model_t_i / t_i for every step."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64)
    mts = torch.as_tensor(model_timesteps, dtype=torch.float64)
    if ts.shape != mts.shape or ts.dim() != 1:
        raise ValueError(f"timesteps {tuple(ts.shape)} and model_timesteps {tuple(mts.shape)} must be equal 1-D shapes")
    return mts[:-1] / ts[:-1]


# ----------------------------------------------------------------------------- data
def dict_loader(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over in-memory tensors yielding the reference's dicts ``{'image', 'label'?}``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels has {len(labels)} rows, images has {len(images)}")
    data = _DictDataset(images, labels)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        out = {"image": self.images[i]}
        if self.labels is not None:
            out["label"] = self.labels[i]
        return out


def _cycle(loader: Iterable) -> Iterator:
    """Iterate ``loader`` forever (re-iterating it when exhausted); error if it yields nothing."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("data_loader yielded no batches")


# ----------------------------------------------------------------------------- helpers
def _check_num_steps(num_steps: Any) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return num_steps


def _scalar_time(t: Any, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=device) if not isinstance(t, torch.Tensor) else t.to(device)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar time, got shape {tuple(t.shape)}")
    return t.reshape(())


def _match_batch(cond: Any, batch: int, device: torch.device, name: str) -> Any:
    """Put a condition on ``device`` and broadcast a single row (or a Python int/float) over the batch."""
    if cond is None:
        return None
    if isinstance(cond, bool):
        raise ValueError(f"{name} must be a tensor, dict of tensors or number, got {cond!r}")
    if isinstance(cond, int):
        return torch.full((batch,), cond, dtype=torch.long, device=device)
    if isinstance(cond, float):
        return torch.full((batch,), cond, dtype=torch.float64, device=device)
    if isinstance(cond, dict):
        return {k: _match_batch(v, batch, device, f"{name}[{k!r}]") for k, v in cond.items()}
    if isinstance(cond, torch.Tensor):
        cond = cond.to(device)
        if cond.dim() == 0:
            return cond.expand(batch)
        if cond.shape[0] == batch:
            return cond
        if cond.shape[0] == 1:
            return cond.expand((batch,) + tuple(cond.shape[1:]))
        raise ValueError(f"{name} has {cond.shape[0]} rows, the batch has {batch}; give {batch} rows or one row")
    return cond  # e.g. a list of prompts, handled by the model's cond_process_fn


def _next_state(out: Any) -> torch.Tensor:
    """A step function returns x_s or a tuple (x_s, ...); take x_s."""
    x = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"step_fn must return a tensor or a tuple (x_next, ...), got {type(out).__name__}")
    return x


def _unpack_batch(batch: Any) -> Tuple[torch.Tensor, Any]:
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(
                f"data_loader batches must hold the key 'image' (and optionally 'label'); got {sorted(batch)}"
            )
        return batch["image"], batch.get("label")
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise ValueError(
        f"data_loader must yield dicts {{'image': tensor, 'label': optional}} or tensors, got {type(batch).__name__}"
    )


# ----------------------------------------------------------------------------- TimeTuner
class TimeTuner:
    """Sample with, and learn, per-step network-time ratios (Xia et al. 2024; THU-LYJ-Lab/time-tuner).

    Args:
        model_fn: continuous-time noise prediction ``model_fn(x, t, condition=..., unconditional_condition=...)``
            (e.g. from :func:`ld3.model_wrapper` or ``LoadedModel.model_fn()``); a plain ``model_fn(x, t)``
            works when no condition is used.
        noise_schedule: the model's :class:`~ld3.schedules.NoiseSchedule`.
        encode_fn: maps a batch of images to the model's space (latent models), used by
            :meth:`optimize_timesteps` before noising.
        device: where training batches are moved (default: leave them where the loader puts them).
            Sampling always runs on the device of ``x``.
    """

    def __init__(
        self,
        model_fn: Callable[..., torch.Tensor],
        noise_schedule: NoiseSchedule,
        encode_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: Union[str, torch.device] | None = None,
    ) -> None:
        if not callable(model_fn):
            raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
        if not hasattr(noise_schedule, "marginal_lambda"):
            raise ValueError(f"noise_schedule must be an ld3 NoiseSchedule, got {type(noise_schedule).__name__}")
        if encode_fn is not None and not callable(encode_fn):
            raise ValueError(f"encode_fn must be callable or None, got {type(encode_fn).__name__}")
        self.model_fn = model_fn
        self._noise_schedule = noise_schedule
        self.encode_fn = encode_fn
        self.device = None if device is None else torch.device(device)

    @property
    def noise_schedule(self) -> NoiseSchedule:
        return self._noise_schedule

    # ------------------------------------------------------------------ grids
    def get_timesteps(self, num_steps: int | None = None, timesteps: TensorLike | None = None) -> torch.Tensor:
        """The grid (num_steps + 1 times, float64, CPU): ``timesteps`` validated, or :func:`default_timesteps`."""
        if timesteps is None:
            if num_steps is None:
                raise ValueError("give num_steps or timesteps")
            return default_timesteps(self.noise_schedule, num_steps)
        if num_steps is not None:
            _check_num_steps(num_steps)
        return check_timesteps(self.noise_schedule, timesteps, num_steps)

    def tuned_timesteps(
        self, t_ratios: TensorLike, num_steps: int | None = None, timesteps: TensorLike | None = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, model_timesteps) for any ld3 solver: ``solver.sample(model_fn, x_T, *these)``.

        model_timesteps = r_i * t_i at the points that start a step, t at the end point. A solver
        whose grid for the NFE has num_steps + 1 points uses the tuned times exactly as DDIM does.
        """
        if num_steps is None and timesteps is None:
            num_steps = int(torch.as_tensor(t_ratios).numel())
        ts = self.get_timesteps(num_steps, timesteps)
        r = check_ratios(t_ratios, ts.numel() - 1)
        return ts, tuned_model_timesteps(ts, r.detach().to(torch.float64).cpu())

    def save_discretization(
        self,
        path: Union[str, os.PathLike],
        t_ratios: TensorLike,
        num_steps: int | None = None,
        timesteps: TensorLike | None = None,
        model: str | None = None,
        solver: str | None = "ddim",
        metrics: Dict[str, Any] | None = None,
        config: Dict[str, Any] | None = None,
    ):
        """Write the tuned schedule as an ``ld3.discretization/1`` JSON file (source ``learned:timetuner``).

        The file records ``solver_options: {convert_at: grid_time}``: in TimeTuner only the network's input time
        moves, so a data-prediction solver (uni_pc, dpm_solver++) must take x0 at the grid time; the ``learned``
        kind refuses such a solver set to the other rule."""
        from ld3.discretizations import save

        ts, mts = self.tuned_timesteps(t_ratios, num_steps, timesteps)
        ratios = [float(v) for v in torch.as_tensor(t_ratios, dtype=torch.float64).detach().cpu().tolist()]
        return save(
            path,
            ts,
            model_timesteps=mts,
            model=model,
            solver=solver,
            nfe=ts.numel() - 1,
            time_unit="t",
            source="learned:timetuner",
            metrics=metrics,
            config={"t_ratios": ratios, "noise_schedule": self.noise_schedule.describe(),
                    "solver_options": {"convert_at": "grid_time"}, **(config or {})},
        )

    # ------------------------------------------------------------------ model and DDIM step
    def noise_prediction_fn(
        self, x: torch.Tensor, t: torch.Tensor, condition: Any = None, uncond_condition: Any = None
    ) -> torch.Tensor:
        """eps(x, t) with the conditions passed only when given (so plain ``model_fn(x, t)`` works)."""
        kwargs = {}
        if condition is not None:
            kwargs["condition"] = _match_batch(condition, x.shape[0], x.device, "condition")
        if uncond_condition is not None:
            kwargs["unconditional_condition"] = _match_batch(
                uncond_condition, x.shape[0], x.device, "uncond_condition"
            )
        return self.model_fn(x, t.expand(x.shape[0]), **kwargs)

    def _ddim(self, eta: Any, generator: torch.Generator | None = None) -> DDIM:
        """The DDIM solver that makes every TimeTuner step (it checks ``eta``)."""
        return DDIM(self.noise_schedule, eta=eta, generator=generator)

    def _ddim_step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        t_ratio: Any,
        ddim: DDIM,
        noise: torch.Tensor | None,
        condition: Any,
        uncond_condition: Any,
        generator: torch.Generator | None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step with the DDIM solver's coefficients (:meth:`DDIM.step_coefficients` on [t, s])."""
        eps = self.noise_prediction_fn(x, t * t_ratio, condition, uncond_condition)
        ts = torch.stack([t, s])
        c_x, c_eps, std = ddim.step_coefficients(ts)
        g = grid_quantities(self.noise_schedule, ts, with_lambda=False)
        x0_pred = (x - g.sigma[0] * eps) / g.alpha[0]
        x_s = c_x[0] * x + c_eps[0] * eps
        if std is None:
            return x_s, x0_pred
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        elif noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, x has {tuple(x.shape)}")
        return x_s + std[0] * noise, x0_pred

    def ddim_step_fn(
        self,
        x: torch.Tensor,
        t: Any,
        s: Any,
        t_ratio: Any = 1.0,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        condition: Any = None,
        uncond_condition: Any = None,
        generator: torch.Generator | None = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_t -> x_s (s < t) with the network at ``t_ratio * t``; returns (x_s, x0_pred).

        The coefficients use t and s (DDIM Eq. 12 with eta; see the module docstring). ``noise`` (or
        a draw from ``generator``) is the fresh noise when eta > 0. This is the ``step_fn`` protocol of
        :meth:`optimize_timesteps`: ``step_fn(x, t, s, t_ratio, condition=..., **step_fn_kwargs)``.
        """
        ddim = self._ddim(eta)
        t = _scalar_time(t, x.device, "t")
        s = _scalar_time(s, x.device, "s")
        self.noise_schedule.check_t(torch.stack([t.detach(), s.detach()]).to(torch.float64), name="(t, s)")
        if not bool(s.detach() < t.detach()):
            raise ValueError(f"a DDIM step needs s < t, got t={float(t)}, s={float(s)}")
        r = t_ratio if isinstance(t_ratio, torch.Tensor) else torch.as_tensor(float(t_ratio), dtype=torch.float64)
        if r.numel() != 1 or not math.isfinite(float(r.detach())) or float(r.detach()) <= 0:
            raise ValueError(f"t_ratio must be one finite number > 0, got {r.detach().tolist()}")
        r = r.to(x.device).reshape(())
        return self._ddim_step(x, t, s, r, ddim, noise, condition, uncond_condition, generator)

    # ------------------------------------------------------------------ sampling
    def ddim_sample(
        self,
        x: torch.Tensor,
        num_steps: int | None,
        t_ratios: TensorLike | None = None,
        eta: float = 0.0,
        condition: Any = None,
        uncond_condition: Any = None,
        generator: torch.Generator | None = None,
        timesteps: TensorLike | None = None,
        return_intermediates: bool = False,
        verbose: bool = False,
    ):
        """DDIM from x (at ``timesteps[0]``) to ``timesteps[-1]``, step i feeding the network r_i * t_i.

        ``t_ratios``: one ratio per step (None: all 1, i.e. plain DDIM on the grid). The grid is
        :func:`default_timesteps` unless ``timesteps`` (num_steps + 1 descending times) is given.
        ``generator`` draws the noise for eta > 0. Differentiable (in x and t_ratios); wrap the
        call in ``torch.no_grad()`` for inference. With ``return_intermediates`` also returns
        ``{'x_t': [...], 'x0_pred': [...]}`` (the reference's format).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"x must be a batched tensor, got {type(x).__name__}")
        ddim = self._ddim(eta, generator)
        ts = self.get_timesteps(num_steps, timesteps).to(x.device)
        n = ts.numel() - 1
        if t_ratios is None:
            r = torch.ones(n, dtype=torch.float64, device=x.device)
        else:
            r = check_ratios(t_ratios, n).to(x.device)
        kwargs = {}
        if condition is not None:
            kwargs["condition"] = _match_batch(condition, x.shape[0], x.device, "condition")
        if uncond_condition is not None:
            kwargs["unconditional_condition"] = _match_batch(uncond_condition, x.shape[0], x.device,
                                                             "uncond_condition")

        def eps_fn(x_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
            return self.model_fn(x_, t_, **kwargs)

        bar = tqdm(total=n, desc="TimeTuner DDIM", disable=not verbose, leave=False)
        x0_preds: List[torch.Tensor] = [x]

        def callback(info: Dict[str, Any]) -> None:
            bar.update(1)
            if return_intermediates:
                x0_preds.append(info["denoised"])

        want_cb = return_intermediates or verbose
        out = ddim.sample(eps_fn, x, ts, model_timesteps=tuned_model_timesteps(ts, r),
                          callback=callback if want_cb else None, return_trajectory=return_intermediates)
        bar.close()
        if return_intermediates:
            x_out, traj = out
            return x_out, {"x_t": list(traj), "x0_pred": x0_preds}
        return out

    # ------------------------------------------------------------------ training
    def step_loss(
        self,
        x_t: torch.Tensor,
        t: Any,
        s: Any,
        t_ratio: Any,
        step_fn: StepFn | None = None,
        condition: Any = None,
        eps_t: torch.Tensor | None = None,
        **step_fn_kwargs: Any,
    ) -> torch.Tensor:
        """The TimeTuner objective of one step on a batch: mean_b sum || eps(x_t, t) - eps(x~_s(r), s) ||^2.

        ``eps_t`` (the untuned prediction at t, no gradient) is computed when not given; gradients
        reach ``t_ratio`` through the step and through eps at s.
        """
        step_fn = self.ddim_step_fn if step_fn is None else step_fn
        uncond = step_fn_kwargs.get("uncond_condition")
        t = _scalar_time(t, x_t.device, "t")
        s = _scalar_time(s, x_t.device, "s")
        if eps_t is None:
            with torch.no_grad():
                eps_t = self.noise_prediction_fn(x_t, t, condition, uncond)
        x_s = _next_state(step_fn(x_t, t, s, t_ratio, condition=condition, **step_fn_kwargs))
        eps_s = self.noise_prediction_fn(x_s, s, condition, uncond)
        return (eps_t - eps_s).square().reshape(x_t.shape[0], -1).sum(1).mean()

    def optimize_timesteps(
        self,
        data_loader: Iterable,
        step_fn: StepFn | None = None,
        num_steps: int | None = None,
        tune_type: str = "sequential",
        lr: float = DEFAULT_LR,
        total_iters: int = DEFAULT_TOTAL_ITERS,
        verbose: bool = True,
        *,
        timesteps: TensorLike | None = None,
        use_labels: bool | None = None,
        noise_generator: torch.Generator | None = None,
        return_history: bool = False,
        **step_fn_kwargs: Any,
    ):
        """Tune one ratio per step (the last stays 1); returns a float64 CPU tensor of ``num_steps`` ratios.

        Args:
            data_loader: iterable of dicts ``{'image': (B, ...), 'label': optional}`` (or bare image
                tensors); cycled so every step sees exactly ``total_iters`` batches.
            step_fn: ``step_fn(x, t, s, t_ratio, condition=..., **step_fn_kwargs) -> x_s or (x_s, ...)``;
                default :meth:`ddim_step_fn`.
            num_steps, timesteps: the grid (see :meth:`get_timesteps`).
            tune_type: ``'sequential'`` or ``'parallel'`` (module docstring).
            lr, total_iters: Adam learning rate and batches per step (reference: 2e-3, 500).
            verbose: show a tqdm bar with the current loss and ratio.
            use_labels: pass the batches' labels as ``condition``; default: unless the model was
                wrapped with ``guidance_type='uncond'``.
            noise_generator: draws the noise that makes x_t from the data (default: global RNG).
            return_history: also return ``{'loss': [[...] per step], 'ratio': [[...] per step]}``.
            step_fn_kwargs: e.g. ``eta``, ``uncond_condition`` (the latter is also used for the
                model evaluations of the loss).
        """
        if tune_type not in TUNE_TYPES:
            raise ValueError(f"tune_type={tune_type!r} is not supported; allowed values: {list(TUNE_TYPES)}")
        try:
            lr_f = float(lr)
        except (TypeError, ValueError):
            raise ValueError(f"lr must be a positive number, got {lr!r}") from None
        if not (math.isfinite(lr_f) and lr_f > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if isinstance(total_iters, bool) or not isinstance(total_iters, int) or total_iters < 1:
            raise ValueError(f"total_iters must be an integer >= 1, got {total_iters!r}")
        if step_fn is None:
            step_fn = self.ddim_step_fn
        if not callable(step_fn):
            raise ValueError(f"step_fn must be callable, got {type(step_fn).__name__}")
        if "eta" in step_fn_kwargs:
            check_eta(step_fn_kwargs["eta"])
        if not hasattr(data_loader, "__iter__"):
            raise ValueError(f"data_loader must be iterable, got {type(data_loader).__name__}")
        if use_labels is None:
            use_labels = getattr(self.model_fn, "guidance_type", None) != "uncond"

        grid = self.get_timesteps(num_steps, timesteps)
        n = grid.numel() - 1
        ns = self.noise_schedule
        alpha_grid = ns.marginal_alpha(grid)
        sigma_grid = ns.marginal_std(grid)
        uncond = step_fn_kwargs.get("uncond_condition")
        tuned: List[torch.Tensor] = []
        history: Dict[str, List[List[float]]] = {"loss": [], "ratio": []}
        batches = _cycle(data_loader)
        bar = tqdm(total=max(n - 1, 0) * total_iters, desc=f"TimeTuner ({tune_type})", disable=not verbose)
        for idx in range(n - 1):
            device = self.device
            ratio: torch.Tensor | None = None
            opt: torch.optim.Optimizer | None = None
            losses: List[float] = []
            ratios_seen: List[float] = []
            for _ in range(total_iters):
                images, labels = _unpack_batch(next(batches))
                if device is None:
                    device = images.device
                images = images.to(device)
                if ratio is None:
                    ratio = torch.ones((), dtype=torch.float64, device=device, requires_grad=True)
                    opt = torch.optim.Adam([ratio], lr=lr_f, betas=ADAM_BETAS)
                cond = labels if use_labels else None
                if isinstance(cond, torch.Tensor):
                    cond = cond.to(device)
                g = grid.to(device)
                with torch.no_grad():
                    x0 = self.encode_fn(images) if self.encode_fn is not None else images
                    z_device = x0.device if noise_generator is None else noise_generator.device
                    z = torch.randn(x0.shape, generator=noise_generator, dtype=x0.dtype, device=z_device).to(x0.device)
                    start = 0 if tune_type == "sequential" else idx
                    x = alpha_grid[start].item() * x0 + sigma_grid[start].item() * z
                    for j in range(start, idx):
                        out = step_fn(x, g[j], g[j + 1], tuned[j].to(device), condition=cond, **step_fn_kwargs)
                        x = _next_state(out)
                    eps_t = self.noise_prediction_fn(x, g[idx], cond, uncond)
                loss = self.step_loss(x, g[idx], g[idx + 1], ratio, step_fn, cond, eps_t=eps_t, **step_fn_kwargs)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                ratios_seen.append(float(ratio.detach()))
                if not math.isfinite(losses[-1]) or not math.isfinite(ratios_seen[-1]):
                    raise FloatingPointError(
                        f"TimeTuner step {idx}: loss {losses[-1]} / ratio {ratios_seen[-1]} became non-finite"
                    )
                bar.update(1)
                if verbose:
                    bar.set_postfix(step=f"{idx + 1}/{n - 1}", loss=f"{losses[-1]:.4g}", ratio=f"{ratios_seen[-1]:.4f}")
            tuned.append(ratio.detach().clone())
            history["loss"].append(losses)
            history["ratio"].append(ratios_seen)
        bar.close()
        out = torch.tensor([float(r.cpu()) for r in tuned] + [1.0], dtype=torch.float64)
        if return_history:
            return out, history
        return out


__all__ = [
    "TimeTuner",
    "TUNE_TYPES",
    "default_timesteps",
    "timesteps_from_indices",
    "check_timesteps",
    "check_ratios",
    "tuned_model_timesteps",
    "ratios_from_discretization",
    "dict_loader",
]
