"""LD3: learning the time discretization of a diffusion ODE solver (Tong et al., "Learning to Discretize
Denoising Diffusion ODEs", ICLR 2025, arXiv 2405.15506; reference code github.com/vinhsuhi/LD3,
``trainer.py``).

Parameterization (paper Sec. 3.1, reference ``discretize_model_wrapper``). With n grid points
(n = ``solver.num_timesteps(steps)``, n = steps + 1 for one-call-per-step solvers):

    u = cumsum(softmax(params1)),  u <- (u - u_0) / (u_{n-1} - u_0)           (u_0 = 0, u_{n-1} = 1)
    time_mode 'lambda':  lambda_i = lambda_min + u_i (lambda_max - lambda_min),  t1_i = lambda^{-1}(lambda_i)
    time_mode 'time':    t1_i = t_max - u_i (t_max - t_min)

so the endpoints are fixed (t1_0 = T, t1_{n-1} = eps) and params1 = 1 gives the logSNR-uniform (lambda
mode) or time-uniform (time mode) grid. ``params1[0]`` cancels in the normalization (it never gets a
gradient). The network's time is decoupled from the integration time (paper Sec. 3.3):

    t2 = t1 + mask * clamp(params2, -max_move, max_move)   (in lambda for 'lambda' mode, in t for 'time'),
    max_move = win_rate * min_i |step_i|,  mask = 0 at both endpoints.

``window_from`` chooses the step the window is measured on: ``steps`` (default: the smallest step of
the current grid, in the space params2 lives in - what the paper describes) or ``logits`` (what the
reference code does in lambda mode: differences of the raw ``params1`` logits, which are all equal at
initialization, so the window is 0 until params1 has moved; kept for reproducing the reference).

Relaxed objective (paper Sec. 3.2, "soft teacher forcing"): every training / validation latent x_T may
move inside the L2 ball of radius ``prior_bound`` around its original value (default 0.001 * dim(x_T) /
steps^2 on the unit-variance latent); latents take one SGD step of ``shift_lr`` (default 12 / steps)
per visit, are projected back into the ball, and the move is kept only for samples whose loss dropped.
``shift_lr`` is halved after a round in which no validation latent moved.

Training (reference ``LD3Trainer``): RMSprop on params1 (lr 0.005, momentum 0.9), SGD on params2 (lr
``lr_time_2 / steps``), each gradient clipped to norm 1; ``training_rounds_v1`` rounds on params1 only,
then ``training_rounds_v2`` rounds on both (``no_v1``: params2 only throughout). Validation after every
step; an improvement saves the best state; ``patient`` checks without improvement reload the best state
and decay the learning rates by ``lr_time_decay`` down to their floors (the very first time it only
switches validation from the first batch to the whole set); training stops when the params2 rate has
hit its floor ``lr2_patient`` times or the rounds are done. Each round starts from the best state.

This module is pure training logic on tensors; :mod:`ld3.learners.pipeline` builds runs from configs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from ld3.schedules import NoiseSchedule
from ld3.utils.io import atomic_torch_save

log = logging.getLogger("ld3.learner")

TIME_MODES = ("lambda", "time")
CONFIG_TIME_MODES = ("auto",) + TIME_MODES


def resolve_time_mode(time_mode: str, noise_schedule: NoiseSchedule) -> str:
    """``auto`` -> what the reference's configs use: ``lambda`` for EDM (sigma-time) models (CIFAR-10,
    FFHQ, AFHQv2), ``time`` for VP models with a time axis t in [eps, 1] (LSUN, ImageNet LDM, Stable
    Diffusion)."""
    if time_mode not in CONFIG_TIME_MODES:
        raise ValueError(f"time_mode={time_mode!r} is not supported; allowed: {list(CONFIG_TIME_MODES)}")
    if time_mode != "auto":
        return time_mode
    return noise_schedule.default_time_mode
WINDOW_FROM = ("steps", "logits")
#: ``init``: the better of the reference start and the best hand-crafted grid (ours), or the reference start
INIT_CHOICES = ("auto", "reference")


# ============================================================================================ config
@dataclass
class LD3Config:
    """Every knob of the LD3 learner; defaults are the reference's CIFAR-10 values (its ``configs/cifar10.yml``)
    unless marked "ours".

    The one source of these defaults: ``configs/learner/ld3.yaml`` builds on this dataclass (the structured
    config ``/schema/learner/ld3``, :mod:`ld3.config_schema`) and holds only what differs. ``docs/ld3.md``
    explains each key and where we differ from the reference.
    """

    # --- parameterization
    #: lambda: params1 -> lambda grid (init logSNR-uniform); time: -> t grid (init time-uniform); auto: the
    #: reference's per-model choice (the schedule's default: lambda for EDM models, time for VP models)
    time_mode: str = "auto"
    #: network-time window = win_rate * smallest step (t2 = t1 + clamp(params2, +-window)); in [0, 0.5]
    win_rate: float = 0.5
    #: ours: ``steps`` (smallest step of the current grid, the paper's intent); ``logits``: the reference code
    #: (raw params1 differences: 0 at init in lambda mode)
    window_from: str = "steps"
    # --- data
    #: teacher pairs used for training (the first num_train of the teacher data)
    num_train: int = 50
    #: next num_valid pairs: validation after every step (0: validate on train)
    num_valid: int = 50
    #: ours: next num_test pairs, only for the final held-out report (0: the validation pairs, original latents)
    num_test: int = 0
    #: training batch (also the batch of the validation-latent moves)
    main_train_batch_size: int = 2
    #: validation batch
    main_valid_batch_size: int = 150
    # --- rounds and optimizers
    #: rounds on params1 only
    training_rounds_v1: int = 2
    #: then rounds on params1 and params2
    training_rounds_v2: int = 5
    #: train params2 only (all rounds)
    no_v1: bool = False
    #: RMSprop lr, momentum and weight decay of params1
    lr_time_1: float = 0.005
    momentum_time_1: float = 0.9
    weight_decay_time_1: float = 0.0
    #: the SGD lr of params2 is lr_time_2 / steps
    lr_time_2: float = 0.1
    #: floors of lr1 and lr2
    min_lr_time_1: float = 5e-5
    min_lr_time_2: float = 1e-6
    #: lr *= decay after ``patient`` non-improving validations (after reloading the best state)
    lr_time_decay: float = 0.8
    #: non-improving validations before reload + decay
    patient: int = 5
    #: stop once lr2 has hit its floor this many times
    lr2_patient: int = 5
    #: gradient-norm clip of params1 and of params2 (each separately)
    grad_clip: float = 1.0
    # --- relaxed objective (latent ball)
    #: latent SGD lr; None: 12 / steps
    shift_lr: float | None = None
    #: shift_lr *= decay after a round in which no validation latent moved
    shift_lr_decay: float = 0.5
    #: L2 radius of the ball around each unit-normal latent; None: 0.001 * H*W*C / steps^2 (0 disables it)
    prior_bound: float | None = None
    #: true: use prior_bound as given (must be set)
    fix_bound: bool = False
    #: the reference's eval_on_one: validate on the first batch until the first patience exhaustion, then on
    #: the whole validation set
    validate_first_batch_only: bool = True
    # --- initialization from a prior grid (reference --match_prior with GITS times)
    #: ours. auto: start from the better (validation loss, original latents) of the reference start and the best
    #: hand-crafted grid; reference: the reference start. Ignored with match_prior (the prior is the start).
    #: Whatever the start, the run never returns a grid worse on validation than its start.
    init: str = "auto"
    #: start params1 from the ``prior`` grid
    match_prior: bool = False
    #: the prior grid: ``kind`` (any ld3.discretizations kind, or best_handcrafted: ours, the hand-crafted grid
    #: with the lowest validation loss) with ``options``, used when ``timesteps`` is None; or ``timesteps``, an
    #: explicit descending list (e.g. the reference's GITS sigmas) in ``time_unit`` (t, or sigma: EDM noise level)
    prior: Dict[str, Any] = field(
        default_factory=lambda: {"kind": "gits", "options": {}, "timesteps": None, "time_unit": "t"})
    # --- engineering
    #: torch.utils.checkpoint around each network call (memory flat in NFE)
    low_gpu: bool = False
    #: ours: optional cap on training steps (None: only the reference's rules)
    max_iters: int | None = None
    #: write the resumable checkpoint every this many training steps
    checkpoint_every: int = 1
    #: batch of the final held-out evaluation
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.time_mode not in CONFIG_TIME_MODES:
            raise ValueError(f"time_mode={self.time_mode!r} is not supported; allowed: {list(CONFIG_TIME_MODES)}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init={self.init!r} is not supported; allowed: {list(INIT_CHOICES)}")
        if self.window_from not in WINDOW_FROM:
            raise ValueError(f"window_from={self.window_from!r} is not supported; allowed: {list(WINDOW_FROM)}")
        if not (0.0 <= float(self.win_rate) <= 0.5):
            raise ValueError(f"win_rate={self.win_rate} must lie in [0, 0.5] (t2 must stay between neighbours)")
        for k in ("num_train", "main_train_batch_size", "main_valid_batch_size", "patient", "lr2_patient",
                  "checkpoint_every", "eval_batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}={v!r} must be an integer >= 1")
        for k in ("num_valid", "num_test", "training_rounds_v1", "training_rounds_v2"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{k}={v!r} must be an integer >= 0")
        if self.training_rounds_v1 + self.training_rounds_v2 < 1:
            raise ValueError("training_rounds_v1 + training_rounds_v2 must be >= 1")
        for k in ("lr_time_1", "lr_time_2", "lr_time_decay", "shift_lr_decay"):
            if not float(getattr(self, k)) > 0:
                raise ValueError(f"{k}={getattr(self, k)!r} must be > 0")
        if not (0 < self.lr_time_decay <= 1):
            raise ValueError(f"lr_time_decay={self.lr_time_decay} must lie in (0, 1]")
        if not float(self.grad_clip) > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be > 0")
        if self.shift_lr is not None and not float(self.shift_lr) >= 0:
            raise ValueError(f"shift_lr={self.shift_lr} must be >= 0 (or null for 12 / steps)")
        if self.prior_bound is not None and not float(self.prior_bound) >= 0:
            raise ValueError(f"prior_bound={self.prior_bound} must be >= 0 (or null for 0.001 * dim / steps^2)")
        if self.fix_bound and self.prior_bound is None:
            raise ValueError("fix_bound=true needs an explicit prior_bound")
        if self.max_iters is not None and (isinstance(self.max_iters, bool) or int(self.max_iters) < 1):
            raise ValueError(f"max_iters={self.max_iters!r} must be null or an integer >= 1")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> LD3Config:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LD3 learner options {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def resolve_hyper(cfg: LD3Config, steps: int, latent_dim: int) -> Dict[str, float]:
    """The step-dependent hyper-parameters (reference ``adjust_hyper``), rounded to 8 decimals as there.

    prior_bound = 0.001 * dim / steps^2 unless ``fix_bound``; shift_lr = 12 / steps unless given;
    lr2 = lr_time_2 / steps.
    """
    if cfg.fix_bound:
        bound = float(cfg.prior_bound)
    elif cfg.prior_bound is not None and cfg.prior_bound == 0.0:
        bound = 0.0  # an explicit 0 switches the relaxed objective off
    else:
        bound = 0.001 * latent_dim / steps**2
    shift_lr = 12.0 / steps if cfg.shift_lr is None else float(cfg.shift_lr)
    return {
        "prior_bound": round(bound, 8),
        "shift_lr": round(shift_lr, 8),
        "lr_time_2": round(float(cfg.lr_time_2) / steps, 8),
    }


# ============================================================================================ params
class LD3Parameterization(nn.Module):
    """params1, params2 -> (t1, t2): the integration grid and the network's times (module docstring)."""

    def __init__(
        self,
        noise_schedule: NoiseSchedule,
        num_points: int,
        time_mode: str = "lambda",
        win_rate: float = 0.5,
        window_from: str = "steps",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        if time_mode not in TIME_MODES:
            raise ValueError(f"time_mode={time_mode!r} is not supported; allowed: {list(TIME_MODES)}")
        if window_from not in WINDOW_FROM:
            raise ValueError(f"window_from={window_from!r} is not supported; allowed: {list(WINDOW_FROM)}")
        self.ns = noise_schedule
        self.num_points = int(num_points)
        self.time_mode = time_mode
        self.win_rate = float(win_rate)
        self.window_from = window_from
        self.params1 = nn.Parameter(torch.ones(num_points, dtype=dtype))
        self.params2 = nn.Parameter(torch.zeros(num_points, dtype=dtype))
        t_hi = torch.tensor(float(noise_schedule.T), dtype=torch.float64)
        t_lo = torch.tensor(float(noise_schedule.eps), dtype=torch.float64)
        self.register_buffer("t_max", t_hi, persistent=False)
        self.register_buffer("t_min", t_lo, persistent=False)
        self.lambda_min = float(noise_schedule.marginal_lambda(t_hi))
        self.lambda_max = float(noise_schedule.marginal_lambda(t_lo))
        mask = torch.ones(num_points, dtype=dtype)
        mask[0] = 0.0
        mask[-1] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def normalized(self) -> torch.Tensor:
        """u in [0, 1], increasing: u_i = sum_{j=1..i} p_j / sum_{j>=1} p_j with p = softmax(params1)."""
        c = torch.cumsum(torch.softmax(self.params1, dim=0), dim=0)
        return (c - c[0]) / (c[-1] - c[0])

    def max_move(self, coords: torch.Tensor) -> torch.Tensor:
        """The window half-width (detached): win_rate * smallest step of ``coords`` (or of the logits)."""
        src = self.params1 if self.window_from == "logits" else coords
        d = (src[1:] - src[:-1]).detach().abs()
        return self.win_rate * d.min()

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        u = self.normalized()
        ends = (self.t_max.reshape(1), self.t_min.reshape(1))
        if self.time_mode == "lambda":
            lam1 = self.lambda_min + u * (self.lambda_max - self.lambda_min)
            mm = self.max_move(lam1)
            lam2 = lam1 + self.mask * torch.clamp(self.params2, -mm, mm)
            t1 = self.ns.inverse_lambda(lam1)
            t2 = self.ns.inverse_lambda(lam2)
        else:
            t1 = self.t_max - u * (self.t_max - self.t_min)
            mm = self.max_move(t1)
            t2 = t1 + self.mask * torch.clamp(self.params2, -mm, mm)
        # exact endpoints (inverse_lambda may be off by rounding; no gradient reaches them anyway)
        t1 = torch.cat([ends[0], t1[1:-1], ends[1]])
        t2 = torch.cat([ends[0], t2[1:-1], ends[1]])
        return t1, t2

    def set_from_timesteps(self, timesteps: torch.Tensor) -> None:
        """Set params1 in closed form so that t1 equals ``timesteps`` (a descending grid from T to eps).

        With target u (the normalized coordinate of each point), p_j proportional to u_j - u_{j-1}
        (j >= 1) reproduces it exactly; params1 = log p (params1[0] is free, set to their mean).
        """
        t = torch.as_tensor(timesteps, dtype=torch.float64).detach().flatten()
        if t.numel() != self.num_points:
            raise ValueError(f"prior grid has {t.numel()} points, the learner needs {self.num_points}")
        if not (t[1:] < t[:-1]).all():
            raise ValueError(f"prior grid must be strictly descending, got {t.tolist()}")
        if self.time_mode == "lambda":
            lam = self.ns.marginal_lambda(t.clamp(float(self.t_min), float(self.t_max)), check=False)
            u = (lam - self.lambda_min) / (self.lambda_max - self.lambda_min)
        else:
            u = (float(self.t_max) - t) / (float(self.t_max) - float(self.t_min))
        u = u.clone()
        u[0], u[-1] = 0.0, 1.0
        du = u[1:] - u[:-1]
        if not (du > 0).all():
            raise ValueError(f"prior grid does not map to increasing coordinates in [0, 1]: {u.tolist()}")
        logits = torch.log(du)
        with torch.no_grad():
            self.params1[1:] = logits.to(self.params1.dtype)
            self.params1[0] = logits.mean().to(self.params1.dtype)


    # ------------------------------------------------------------------ the reference's best_v2.pt
    def reference_params(self) -> Dict[str, torch.Tensor]:
        """``params1``/``params2`` as the LD3 reference stores them in ``best_v2.pt`` (detached, CPU)."""
        return {"params1": params1_reference_order(self.params1.detach().cpu(), self.time_mode),
                "params2": self.params2.detach().cpu().clone()}

    def load_reference_params(self, snapshot: Dict[str, torch.Tensor]) -> None:
        """Set params1/params2 from a reference ``best_v2.pt`` dict (see :func:`params1_reference_order`)."""
        p1 = torch.as_tensor(snapshot["params1"]).detach().flatten().cpu()
        p2 = torch.as_tensor(snapshot["params2"]).detach().flatten().cpu()
        if p1.numel() != self.num_points or p2.numel() != self.num_points:
            raise ValueError(f"best_v2.pt params1/params2 have {p1.numel()}/{p2.numel()} values; this grid needs "
                             f"{self.num_points} each")
        with torch.no_grad():
            self.params1.copy_(params1_reference_order(p1, self.time_mode).to(self.params1))
            self.params2.copy_(p2.to(self.params2))


def params1_reference_order(params1: torch.Tensor, time_mode: str) -> torch.Tensor:
    """Our params1 <-> the LD3 reference's (an involution).

    Both put p = softmax(params1) with p_0 free. Lambda mode: the step from grid point i to i + 1
    (noisiest first) has weight p_{i+1} in both. Time mode: the reference builds the grid from
    ``cumsum(p).flip(0)`` (vinhsuhi/LD3 ``trainer.py``, ``discretize_model_wrapper``), so step i has
    weight p_{N-i}; ours keeps p_{i+1} in every mode. The conversion keeps params1[0] and reverses
    params1[1:] in time mode; params2 is indexed by grid point in both.
    """
    if time_mode not in TIME_MODES:
        raise ValueError(f"time_mode={time_mode!r} is not supported; allowed: {list(TIME_MODES)}")
    p = params1.detach().clone()
    if time_mode == "time":
        p = torch.cat([p[:1], p[1:].flip(0)])
    return p


def load_reference_checkpoint(path: Any) -> Dict[str, torch.Tensor]:
    """Read a reference ``best_v2.pt`` (tensors only: ``torch.load(weights_only=True)``)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not {"params1", "params2"} <= set(obj):
        raise ValueError(f"{path}: expected the LD3 reference's dict with params1 and params2, "
                         f"got {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    return obj


# ============================================================================================ pieces
def project_to_ball(latent: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each sample of ``latent`` onto the L2 ball of ``radius`` around ``center``."""
    b = latent.shape[0]
    diff = (latent - center).reshape(b, -1)
    norm = diff.norm(dim=1, keepdim=True)
    scale = torch.where(norm > radius, radius / norm.clamp_min(1e-30), torch.ones_like(norm))
    return (center.reshape(b, -1) + diff * scale).reshape(latent.shape)


def prior_scale(noise_schedule: NoiseSchedule) -> float:
    """x_T = scale * latent for a unit-normal latent: sigma_max for EDM (alpha = 1), 1 for VP models.

    The LD3 reference's ``prior_transformation`` (VP: identity; EDM: times T).
    """
    return float(noise_schedule.prior_scale)


def checkpointed(model_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``low_gpu``: recompute each network call in the backward pass (``torch.utils.checkpoint``).

    Only the inputs and outputs of every call are kept, so memory no longer grows with
    NFE x (activations of the network); costs one extra forward per call in the backward.
    """
    from torch.utils.checkpoint import checkpoint

    def fn(x: torch.Tensor, t: torch.Tensor, *args: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return model_fn(x, t, *args)
        return checkpoint(model_fn, x, t, *args, use_reentrant=False)

    return fn


class LD3DivergenceError(RuntimeError):
    """NaN/inf in a loss or in the timesteps: training stopped, the last good state was saved."""


@dataclass
class LD3Data:
    """Teacher pairs in memory: unit-normal latents, teacher outputs (pixel space), optional conditions."""

    latents: torch.Tensor
    targets: torch.Tensor
    conditions: Any | None = None
    unconditions: Any | None = None

    def __post_init__(self) -> None:
        if self.latents.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"latents ({self.latents.shape[0]}) and targets ({self.targets.shape[0]}) differ in length"
            )

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def cond(self, idx: torch.Tensor, device: Any = None) -> Tuple[Any, Any]:
        c, u = _take(self.conditions, idx), _take(self.unconditions, idx)
        if device is not None:
            c = c.to(device) if isinstance(c, torch.Tensor) else c
            u = u.to(device) if isinstance(u, torch.Tensor) else u
        return c, u


def _take(c: Any, idx: torch.Tensor) -> Any:
    if c is None:
        return None
    if isinstance(c, torch.Tensor):
        return c[idx]
    return [c[int(i)] for i in idx]


ModelFnFactory = Callable[[Any, Any], Callable[..., torch.Tensor]]


# ============================================================================================ trainer
class LD3Trainer:
    """The LD3 training loop (reference ``LD3Trainer``), resumable at step granularity.

    Args:
        cfg: learner options.
        solver: a :class:`ld3.solvers.Solver`.
        steps: NFE (``num_points = solver.num_timesteps(steps)``).
        make_model_fn: ``(condition, unconditional_condition) -> model_fn(x, t)`` (noise prediction).
        loss_fn: ``(pred_pixels, target_pixels) -> (B,)``.
        train, valid: :class:`LD3Data` (``valid`` None: validate on the training samples, as the
            reference does with ``num_valid = 0``).
        decode: latent sample -> pixels (None: identity).
        run_dir: where ``checkpoint.pt``, ``best_v1.pt``/``best_v2.pt`` go (None: nothing written).
        device, seed, latent_dim: placement, the seed of the per-round shuffles, dim(x_T) for the bound.
        on_step: optional ``fn(trainer)`` called after every training step (progress, tests).
    """

    def __init__(
        self,
        cfg: LD3Config,
        solver: Any,
        steps: int,
        make_model_fn: ModelFnFactory,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train: LD3Data,
        valid: LD3Data | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        run_dir: Path | None = None,
        device: Any = "cpu",
        seed: int = 0,
        on_step: Callable[[LD3Trainer], None] | None = None,
        metrics_fn: Callable[[Dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.solver = solver
        self.ns = solver.noise_schedule
        self.steps = int(steps)
        self.num_points = int(solver.num_timesteps(self.steps))
        self.make_model_fn = make_model_fn
        self.loss_fn = loss_fn
        self.decode = decode
        self.device = torch.device(device)
        self.seed = int(seed)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.on_step = on_step
        self.metrics_fn = metrics_fn
        self.train_data = train
        self.valid_data = valid if (valid is not None and len(valid) > 0) else train
        self.latent_dim = int(train.latents[0].numel())
        self.hyper = resolve_hyper(cfg, self.steps, self.latent_dim)
        self.prior_bound = self.hyper["prior_bound"]
        self.scale = prior_scale(self.ns)

        self.time_mode = resolve_time_mode(cfg.time_mode, self.ns)
        self.param = LD3Parameterization(
            self.ns, self.num_points, self.time_mode, cfg.win_rate, cfg.window_from
        ).to(self.device)
        self.opt1 = torch.optim.RMSprop(
            [self.param.params1], lr=cfg.lr_time_1, momentum=cfg.momentum_time_1, weight_decay=cfg.weight_decay_time_1
        )
        self.opt2 = torch.optim.SGD([self.param.params2], lr=self.hyper["lr_time_2"])

        # mutable training state (everything here is checkpointed)
        self.latents_train = train.latents.clone()
        self.latents_valid = self.valid_data.latents.clone() if valid is not None and len(valid) > 0 else None
        self.state: Dict[str, Any] = {
            "round": 0,
            "phase": "round_start",
            "pos": 0,
            "iter": 0,
            "count_worse": 0,
            "count_min_lr2_hit": 0,
            "best_loss": math.inf,
            "eval_on_one": bool(cfg.validate_first_batch_only),
            "shift_lr": self.hyper["shift_lr"],
            "no_change": True,
            "stop_reason": None,
            "prior_matched": False,
            "elapsed_s": 0.0,
        }
        self.best: Dict[str, Any] | None = None
        self.history: List[Dict[str, Any]] = []
        self._t_start = time.time()

    # ---------------------------------------------------------------------------------- helpers
    @property
    def total_rounds(self) -> int:
        return self.cfg.training_rounds_v1 + self.cfg.training_rounds_v2

    @property
    def in_v1(self) -> bool:
        return self.state["round"] < self.cfg.training_rounds_v1

    @property
    def version(self) -> str:
        return "Ver1" if self.in_v1 else "Ver2"

    def _valid_latents(self) -> torch.Tensor:
        return self.latents_train if self.latents_valid is None else self.latents_valid

    def _set_valid_latents(self, value: torch.Tensor) -> None:
        if self.latents_valid is None:
            self.latents_train = value
        else:
            self.latents_valid = value

    def timesteps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.param()

    def solve(
        self,
        latents: torch.Tensor,
        t1: torch.Tensor,
        t2: torch.Tensor,
        cond: Any = None,
        uncond: Any = None,
    ) -> torch.Tensor:
        """Student sample in pixel space for unit-normal ``latents`` on the grid (t1, t2)."""
        model_fn = self.make_model_fn(cond, uncond)
        if self.cfg.low_gpu:
            model_fn = checkpointed(model_fn)
        x_T = latents.to(self.device) * self.scale
        x0 = self.solver.sample(model_fn, x_T, t1, model_timesteps=t2)
        return x0 if self.decode is None else self.decode(x0)

    def loss_vector(self, data: LD3Data, latents: torch.Tensor, idx: torch.Tensor, t1, t2) -> torch.Tensor:
        cond, uncond = data.cond(idx, self.device)
        out = self.solve(latents, t1, t2, cond, uncond)
        return self.loss_fn(out, data.targets[idx].to(self.device))

    def _check_finite(self, what: str, **values: torch.Tensor) -> None:
        bad = {k: v for k, v in values.items() if not torch.isfinite(v.detach()).all()}
        if not bad:
            return
        shown = {k: [round(float(x), 6) for x in v.detach().flatten()[:16].cpu()] for k, v in values.items()}
        where = self.save_checkpoint(status="diverged")
        msg = (
            f"LD3 diverged at step {self.state['iter']} (round {self.state['round']}, {self.version}, "
            f"phase {self.state['phase']}): non-finite {sorted(bad)} in {what}; values: {shown}. "
            f"The last good state is saved in {where}. Lower lr_time_1 / lr_time_2 or check the model."
        )
        log.error(msg)
        raise LD3DivergenceError(msg)

    # ---------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss on the validation latents (the first batch only while ``eval_on_one``)."""
        t1, t2 = self.timesteps()
        lat = self._valid_latents()
        n = len(self.valid_data)
        bs = self.cfg.main_valid_batch_size
        total, count = 0.0, 0
        for start in range(0, n, bs):
            idx = torch.arange(start, min(start + bs, n))
            lv = self.loss_vector(self.valid_data, lat[idx], idx, t1, t2)
            self._check_finite("validation loss", loss=lv, timesteps=t1, model_timesteps=t2)
            total += float(lv.mean())
            count += 1
            if self.state["eval_on_one"]:
                break
        return total / count

    def _snapshot(self) -> Dict[str, Any]:
        t1, t2 = self.timesteps()
        return {
            "params1": self.param.params1.detach().clone(),
            "params2": self.param.params2.detach().clone(),
            "t1": t1.detach().clone(),
            "t2": t2.detach().clone(),
            "valid_latents": self._valid_latents().clone(),
            "loss": self.state["best_loss"],
            "iter": self.state["iter"],
            "round": self.state["round"],
        }

    def _load_best(self, with_latents: bool) -> None:
        if self.best is None:
            return
        with torch.no_grad():
            self.param.params1.copy_(self.best["params1"])
            self.param.params2.copy_(self.best["params2"])
        if with_latents:
            self._set_valid_latents(self.best["valid_latents"].clone())

    def _write_best_files(self) -> None:
        if self.run_dir is None or self.best is None:
            return
        snap = {  # the reference's order of params1 (params1_reference_order)
            "params1": params1_reference_order(self.best["params1"].cpu(), self.time_mode),
            "params2": self.best["params2"].cpu(),
            "best_t_steps": torch.cat([self.best["t1"], self.best["t2"]]).cpu(),
        }
        if self.in_v1:
            atomic_torch_save(snap, self.run_dir / "best_v1.pt")
        atomic_torch_save(snap, self.run_dir / "best_v2.pt")

    def examine(self) -> float:
        """Validation + patience logic of the reference ``_examine_checkpoint``."""
        st, cfg = self.state, self.cfg
        loss = self.validate()
        improved = loss < st["best_loss"]
        if improved:
            st["best_loss"] = loss
            st["count_worse"] = 0
            with torch.no_grad():
                self.best = self._snapshot()
            self._write_best_files()
        else:
            st["count_worse"] += 1
        self._record(kind="valid", valid_loss=loss, best_loss=st["best_loss"], improved=improved)
        worse = "" if improved else f" (worse x{st['count_worse']})"
        log.info(f"{self.version} iter {st['iter']} valid loss {loss:.6g} best {st['best_loss']:.6g}{worse}")
        if st["count_worse"] >= cfg.patient:
            self._load_best(with_latents=True)
            st["count_worse"] = 0
            if st["eval_on_one"]:
                st["eval_on_one"] = False
                st["best_loss"] = self.validate()
                if self.best is not None:
                    self.best["loss"] = st["best_loss"]
                log.info(f"{self.version} reloaded best; validating on the whole set from now (best "
                         f"{st['best_loss']:.6g}); learning rates unchanged")
                return loss
            g1 = self.opt1.param_groups[0]
            g1["lr"] = max(cfg.lr_time_decay * g1["lr"], cfg.min_lr_time_1)
            if not self.in_v1:
                g2 = self.opt2.param_groups[0]
                g2["lr"] = max(cfg.lr_time_decay * g2["lr"], cfg.min_lr_time_2)
                if g2["lr"] <= cfg.min_lr_time_2:
                    st["count_min_lr2_hit"] += 1
            log.info(f"{self.version} reloaded best; lr1 -> {g1['lr']:.3g}, lr2 -> "
                     f"{self.opt2.param_groups[0]['lr']:.3g}")
        return loss

    def _record(self, **row: Any) -> None:
        st = self.state
        row.update(
            iter=st["iter"],
            round=st["round"],
            version=self.version,
            lr1=self.opt1.param_groups[0]["lr"],
            lr2=self.opt2.param_groups[0]["lr"],
            shift_lr=st["shift_lr"],
        )
        self.history.append(row)
        if self.metrics_fn is not None:
            self.metrics_fn(row)

    # ---------------------------------------------------------------------------------- steps
    def _set_trainable(self, train: bool) -> None:
        p1, p2 = self.param.params1, self.param.params2
        if not train:
            p1.requires_grad_(False)
            p2.requires_grad_(False)
        elif self.cfg.no_v1:
            p1.requires_grad_(False)
            p2.requires_grad_(True)
        else:
            p1.requires_grad_(True)
            p2.requires_grad_(not self.in_v1)

    def _batches(self, n: int, order: torch.Tensor) -> List[torch.Tensor]:
        bs = self.cfg.main_train_batch_size
        return [order[i : i + bs] for i in range(0, n, bs)]

    def _latent_step(
        self, data: LD3Data, latents: torch.Tensor, idx: torch.Tensor, train_params: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, float, bool]:
        """One visit of a batch: loss, backward, latent SGD (+ parameter step); returns new latents.

        Returns (new latents for idx, moved mask, batch loss, stop flag).
        """
        st, cfg = self.state, self.cfg
        self._set_trainable(train_params)
        ori = data.latents[idx].to(self.device)
        lat = latents[idx].to(self.device).clone().requires_grad_(True)
        t1, t2 = self.timesteps()
        self._check_finite("timesteps", timesteps=t1, model_timesteps=t2)
        lv = self.loss_vector(data, lat, idx, t1, t2)
        ref = lv.detach().clone()
        loss = lv.mean()
        self._check_finite("training loss", loss=loss.detach().reshape(1), timesteps=t1, model_timesteps=t2)
        loss.backward()
        with torch.no_grad():
            shifted = lat - st["shift_lr"] * lat.grad  # SGD on the latents (reference: torch.optim.SGD)
        stop = False
        if train_params:
            prev = (self.param.params1.detach().clone(), self.param.params2.detach().clone())
            torch.nn.utils.clip_grad_norm_([self.param.params1], cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_([self.param.params2], cfg.grad_clip)
            self.opt1.step()
            self.opt2.step()
            with torch.no_grad():
                nt1, nt2 = self.timesteps()
            if not (torch.isfinite(nt1).all() and torch.isfinite(nt2).all()):
                bad1, bad2 = nt1.clone(), nt2.clone()
                with torch.no_grad():  # restore the last good parameters before saving
                    self.param.params1.copy_(prev[0])
                    self.param.params2.copy_(prev[1])
                self._check_finite("timesteps after the parameter update", timesteps=bad1, model_timesteps=bad2)
            st["iter"] += 1
            self._record(kind="train", train_loss=float(loss.detach()))
            self.examine()
            if st["count_min_lr2_hit"] >= cfg.lr2_patient:
                st["stop_reason"] = f"lr2 reached its floor {cfg.lr2_patient} times"
                stop = True
            elif cfg.max_iters is not None and st["iter"] >= int(cfg.max_iters):
                st["stop_reason"] = f"max_iters={cfg.max_iters} reached"
                stop = True
        self.opt1.zero_grad(set_to_none=True)
        self.opt2.zero_grad(set_to_none=True)
        if stop:
            return latents[idx], torch.zeros(len(idx), dtype=torch.bool), float(loss.detach()), True
        # keep the latent move only where the per-sample loss dropped (reference ``_update_latents``)
        with torch.no_grad():
            proj = project_to_ball(shifted, ori, self.prior_bound)
            t1, t2 = self.timesteps()
            new_lv = self.loss_vector(data, proj, idx, t1, t2)
            moved = (new_lv < ref).cpu()
            new = latents[idx].clone()
            new[moved] = proj.detach().cpu().to(new.dtype)[moved]
        return new, moved, float(loss.detach()), False

    # ---------------------------------------------------------------------------------- loop
    def match_prior(self, timesteps: torch.Tensor) -> None:
        """Initialize params1 so that t1 equals a prior grid (the reference fits GITS times)."""
        self.param.set_from_timesteps(timesteps)
        t1, _ = self.timesteps()
        err = float((t1.detach().cpu() - torch.as_tensor(timesteps, dtype=torch.float64)).abs().max())
        log.info(f"matched prior grid (max |t1 - prior| = {err:.3g}): {t1.detach().cpu().tolist()}")
        self.state["prior_matched"] = True

    def train(self) -> Dict[str, Any]:
        """Run (or continue) training until a stopping rule fires; returns the final state."""
        st, cfg = self.state, self.cfg
        n_train = len(self.train_data)
        n_valid = len(self.valid_data)
        since_ckpt = 0
        while st["phase"] != "done":
            if st["phase"] == "round_start":
                if st["round"] >= self.total_rounds:
                    st["phase"], st["stop_reason"] = "done", st["stop_reason"] or "all rounds done"
                    break
                log.info(f"{self.version} round {st['round']}")
                if st["round"] > 0:
                    self._load_best(with_latents=False)
                    st["count_worse"] = 0
                self.examine()
                st["phase"], st["pos"], st["no_change"] = "train", 0, True
                self.save_checkpoint()
            elif st["phase"] == "train":
                gen = torch.Generator().manual_seed(self.seed * 100003 + st["round"])
                order = torch.randperm(n_train, generator=gen)
                batches = self._batches(n_train, order)
                if st["pos"] >= len(batches):
                    st["phase"], st["pos"] = "valid", 0
                    continue
                idx = batches[st["pos"]]
                new, _, _, stop = self._latent_step(self.train_data, self.latents_train, idx, train_params=True)
                self.latents_train[idx] = new.to(self.latents_train.dtype).cpu()
                st["pos"] += 1
                if self.on_step is not None:
                    self.on_step(self)
                if stop:
                    st["phase"] = "done"
                    break
                since_ckpt += 1
                if since_ckpt >= cfg.checkpoint_every:
                    self.save_checkpoint()
                    since_ckpt = 0
            elif st["phase"] == "valid":
                batches = self._batches(n_valid, torch.arange(n_valid))
                if self.prior_bound == 0.0 or self.latents_valid is None or st["pos"] >= len(batches):
                    st["phase"] = "round_end"
                    continue
                idx = batches[st["pos"]]
                new, moved, _, _ = self._latent_step(self.valid_data, self.latents_valid, idx, train_params=False)
                self.latents_valid[idx] = new.to(self.latents_valid.dtype).cpu()
                if bool(moved.any()):
                    st["no_change"] = False
                st["pos"] += 1
            elif st["phase"] == "round_end":
                st["round"] += 1
                if st["no_change"] and self.prior_bound > 0:
                    st["shift_lr"] *= cfg.shift_lr_decay
                    log.info(f"no validation latent moved: shift_lr -> {st['shift_lr']:.4g}")
                st["phase"], st["pos"] = "round_start", 0
                self.save_checkpoint()
            else:  # pragma: no cover - corrupted state
                raise ValueError(f"unknown training phase {st['phase']!r}")
        log.info(f"training stopped: {st['stop_reason']}; best valid loss {st['best_loss']:.6g}")
        self._load_best(with_latents=True)
        self.save_checkpoint(status="done")
        return dict(st)

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        st = dict(self.state)
        st["elapsed_s"] = st.get("elapsed_s", 0.0) + (time.time() - self._t_start)
        return {
            "format": "ld3.learner-checkpoint/1",
            "state": st,
            "params1": self.param.params1.detach().cpu().clone(),
            "params2": self.param.params2.detach().cpu().clone(),
            "opt1": copy.deepcopy(self.opt1.state_dict()),
            "opt2": copy.deepcopy(self.opt2.state_dict()),
            "latents_train": self.latents_train.cpu(),
            "latents_valid": None if self.latents_valid is None else self.latents_valid.cpu(),
            "best": None if self.best is None else {k: (v.cpu() if torch.is_tensor(v) else v)
                                                     for k, v in self.best.items()},
            "history": list(self.history),
            "hyper": dict(self.hyper),
        }

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if sd.get("format") != "ld3.learner-checkpoint/1":
            raise ValueError(f"not an LD3 learner checkpoint (format={sd.get('format')!r})")
        if sd["params1"].numel() != self.num_points:
            raise ValueError(f"checkpoint has {sd['params1'].numel()} points, this run needs {self.num_points}")
        with torch.no_grad():
            self.param.params1.copy_(sd["params1"])
            self.param.params2.copy_(sd["params2"])
        self.opt1.load_state_dict(sd["opt1"])
        self.opt2.load_state_dict(sd["opt2"])
        self.latents_train = sd["latents_train"].clone()
        self.latents_valid = None if sd["latents_valid"] is None else sd["latents_valid"].clone()
        self.best = None if sd["best"] is None else {k: (v.to(self.device) if torch.is_tensor(v) else v)
                                                       for k, v in sd["best"].items()}
        self.history = list(sd["history"])
        self.state = dict(sd["state"])
        self._t_start = time.time()

    def save_checkpoint(self, status: str = "running") -> Path | None:
        if self.run_dir is None:
            return None
        sd = self.state_dict()
        sd["status"] = status
        return atomic_torch_save(sd, self.run_dir / "checkpoint.pt")

    def try_resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if present; returns whether training state was restored."""
        if self.run_dir is None:
            return False
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            return False
        sd = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        self.load_state_dict(sd)
        log.info(f"resumed from {path} (round {self.state['round']}, phase {self.state['phase']}, "
                 f"step {self.state['iter']}, status {sd.get('status')})")
        return True

    def best_timesteps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(t1, t2) of the best state (the current ones when no validation has run)."""
        if self.best is not None:
            return self.best["t1"].detach().cpu(), self.best["t2"].detach().cpu()
        t1, t2 = self.timesteps()
        return t1.detach().cpu(), t2.detach().cpu()


# ============================================================================================ eval
@torch.no_grad()
def evaluate_grid(
    solver: Any,
    make_model_fn: ModelFnFactory,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: LD3Data,
    timesteps: torch.Tensor,
    model_timesteps: torch.Tensor | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    device: Any = "cpu",
) -> Dict[str, float]:
    """Mean (and std) per-sample distance to the teacher for the original latents of ``data``."""
    scale = prior_scale(solver.noise_schedule)
    device = torch.device(device)
    vals: Dict[str, List[torch.Tensor]] = {"loss": []}
    n = len(data)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        cond, uncond = data.cond(idx, device)
        fn = make_model_fn(cond, uncond)
        x0 = solver.sample(fn, data.latents[idx].to(device) * scale, timesteps.to(device),
                           model_timesteps=None if model_timesteps is None else model_timesteps.to(device))
        out = x0 if decode is None else decode(x0)
        tgt = data.targets[idx].to(device)
        vals["loss"].append(loss_fn(out, tgt).detach().cpu().double())
    res: Dict[str, float] = {}
    for k, v in vals.items():
        v = torch.cat(v)
        res[k] = float(v.mean())
        res[f"{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    res["n"] = n
    return res


def split_data(data: LD3Data, num_train: int, num_valid: int, num_test: int) -> Tuple[LD3Data, LD3Data, LD3Data]:
    """First num_train, next num_valid, next num_test samples (the reference's order)."""
    need = num_train + num_valid + num_test
    if len(data) < need:
        raise ValueError(
            f"teacher data has {len(data)} samples, the learner needs num_train + num_valid + num_test = {need}"
        )

    def sub(a: int, b: int) -> LD3Data:
        idx = torch.arange(a, b)
        return LD3Data(data.latents[a:b], data.targets[a:b], _take(data.conditions, idx), _take(data.unconditions, idx))

    return (
        sub(0, num_train),
        sub(num_train, num_train + num_valid),
        sub(num_train + num_valid, need),
    )

