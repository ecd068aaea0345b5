"""A TimeTuner run from a config (``python main.py learner=timetuner``): same outputs as an LD3 run.

TimeTuner (Xia et al., CVPR 2024; ``ld3/learners/timetuner.py``) tunes one network-time ratio per DDIM
step. Here its data are the teacher pairs of the run (``ld3.data``): the teacher's outputs are the x_0
samples it noises (for latent models the teacher's final latents, from an ``img_space: latent``
teacher set of the same seeds), their conditions the labels. It tunes DDIM on the grid of the configured solver
(``solver.num_timesteps(steps)`` points: the reference grid, a given list, or any discretization kind)
and the result - timesteps t_i with network times r_i t_i - drives that solver. The run directory,
``discretization.json`` (source ``learned:timetuner``), ``history.json``, plots, ``result.json`` with
the held-out comparison against the hand-crafted grids, and the results-store row are written by the
same code as for LD3 (:mod:`ld3.learners.pipeline`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List

import torch

from ld3.learners.ld3 import LD3Config, LD3Data, evaluate_grid
from ld3.learners.timetuner import (
    DEFAULT_LR,
    DEFAULT_TOTAL_ITERS,
    TUNE_TYPES,
    TimeTuner,
    check_timesteps,
    default_timesteps,
    dict_loader,
    timesteps_from_indices,
    tuned_model_timesteps,
)
from ld3.solvers.common import CONVERT_AT

log = logging.getLogger("ld3.learner")

#: ``discretization`` value: the hand-crafted grid with the lowest validation loss as the base grid (ours)
BEST_HANDCRAFTED = "best_handcrafted"
#: ``objective``: the paper's per-step DDIM objective, or tuning through the run's solver to the teacher (ours)
OBJECTIVES = ("ddim_step", "solver_output")
CONVERT_AT_CHOICES = ("auto", "solver", *CONVERT_AT)
#: keys of configs/learner/ld3.yaml that a per-model preset may set and TimeTuner does not use (ignored)
_LD3_ONLY = frozenset(f.name for f in fields(LD3Config)) - {"num_train", "num_valid", "num_test", "eval_batch_size"}


@dataclass
class TimeTunerRunConfig:
    """The ``learner`` group of a TimeTuner run; defaults are the reference's (``time_tuner.py``) unless marked
    "ours".

    The one source of these defaults: ``configs/learner/timetuner.yaml`` builds on this dataclass (the
    structured config ``/schema/learner/timetuner``, :mod:`ld3.config_schema`) and holds only what differs.
    ``docs/timetuner.md`` explains each key.
    """

    # --- objective and optimizer (reference values)
    #: sequential: x_t from running the already tuned steps; parallel: x_t = alpha_t x_0 + sigma_t z
    tune_type: str = "sequential"
    #: ddim_step: the paper's per-step DDIM objective; solver_output (ours): all ratios tuned together through the
    #: run's solver against the teacher's final samples (ld3/learners/timetuner_output.py, docs/timetuner.md)
    objective: str = "ddim_step"
    #: solver_output only: validate every this many iterations (the best ratios on validation are returned)
    valid_every: int = 10
    #: data-prediction solvers (uni_pc, dpm_solver++) only: where their noise prediction, taken at the network time
    #: r_i t_i, becomes x0. grid_time: at t_i (the paper's TimeTuner: only the network's input moves);
    #: network_time: at r_i t_i; solver: the solver config's ``convert_at``; auto: solver_output tunes the ratios
    #: with both rules and keeps the one with the lower validation loss, ddim_step uses grid_time (its ratios
    #: are tuned for DDIM, where only the input moves). The result and discretization.json record the rule.
    convert_at: str = "auto"
    #: Adam lr of each ratio (betas 0.9, 0.999; init 1)
    lr: float = DEFAULT_LR
    #: batches per tuned step (the loader is cycled)
    total_iters: int = DEFAULT_TOTAL_ITERS
    #: DDIM stochasticity of the tuned sampler (0: deterministic)
    eta: float = 0.0
    # --- grid (at most one of timesteps, indices, discretization; all None: the reference grid)
    #: a list of descending times t
    timesteps: List[float] | None = None
    #: reference-style discrete indices (e.g. [901, ..., 1]) instead of ``timesteps``
    indices: List[float] | None = None
    #: ours: best_handcrafted (the hand-crafted grid - time_uniform, time_quadratic, logSNR, edm - with the lowest
    #: validation loss) or any ld3.discretizations kind. None (with timesteps and indices None): the reference
    #: grid (discrete models k = {901, 801, ..., 1} style, t = (k+1)/N, end 1/N; continuous: time-uniform T..eps),
    #: which starts below T while the teacher pairs start at T, so against the teacher it is far worse
    discretization: str | None = BEST_HANDCRAFTED
    #: options of ``discretization``
    discretization_options: Dict[str, Any] | None = None
    # --- data (ours: the reference leaves the loader to the user; here: the run's teacher pairs)
    #: images per training batch (at most num_train)
    batch_size: int = 64
    #: teacher pairs whose outputs are the x_0 samples (the same first pairs as LD3's)
    num_train: int = 50
    #: next pairs: validation distance of the base and the tuned grid; the base grid is returned when the tuned
    #: one is worse there (as LD3); 0: no check
    num_valid: int = 50
    #: next pairs: the held-out report (0: validation pairs, as LD3)
    num_test: int = 0
    #: None: labels are the condition unless the model is wrapped with guidance_type=uncond
    use_labels: bool | None = None
    #: loader shuffling and the noise that makes x_t (configs/learner/timetuner.yaml: the run's ``seed``)
    seed: int = 0
    # --- output
    #: tqdm bar with the current loss and ratio
    verbose: bool = True
    #: batch of the validation / held-out evaluations
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.tune_type not in TUNE_TYPES:
            raise ValueError(f"learner.tune_type={self.tune_type!r} is not supported; allowed: {list(TUNE_TYPES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"learner.objective={self.objective!r} is not supported; allowed: {list(OBJECTIVES)}")
        if self.convert_at not in CONVERT_AT_CHOICES:
            raise ValueError(f"learner.convert_at={self.convert_at!r} is not supported; allowed: "
                             f"{list(CONVERT_AT_CHOICES)}")
        for k in ("total_iters", "batch_size", "num_train", "eval_batch_size", "valid_every"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"learner.{k}={v!r} must be an integer >= 1")
        for k in ("num_valid", "num_test"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"learner.{k}={v!r} must be an integer >= 0")
        given = [k for k in ("timesteps", "indices", "discretization") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"learner.{given[0]} and learner.{given[1]} both set; give at most one of "
                             "timesteps, indices, discretization (set the others to null)")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> TimeTunerRunConfig:
        names = {f.name for f in fields(cls)}
        ignored = sorted(set(d) & _LD3_ONLY - names)
        unknown = sorted(set(d) - names - _LD3_ONLY)
        if unknown:
            raise ValueError(f"unknown TimeTuner learner options {unknown}; allowed: {sorted(names)}")
        if ignored:
            log.info(f"TimeTuner ignores the LD3 options {ignored} (e.g. from a learner preset)")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def run_name(solver: str, steps: int, tcfg: TimeTunerRunConfig, loss: str, seed: int) -> str:
    kind = tcfg.tune_type if tcfg.objective == "ddim_step" else tcfg.objective
    return (f"timetuner-{solver}-N{steps}-{kind}-lr{tcfg.lr}-it{tcfg.total_iters}-bs{tcfg.batch_size}"
            f"-{loss}-seed{seed}")


def base_grid(tcfg: TimeTunerRunConfig, solver: Any, steps: int) -> torch.Tensor:
    """The grid whose steps are tuned: ``solver.num_timesteps(steps)`` points (reference grid by default)."""
    ns = solver.noise_schedule
    n_points = solver.num_timesteps(steps)
    if tcfg.timesteps is not None:
        return check_timesteps(ns, torch.as_tensor(list(tcfg.timesteps), dtype=torch.float64), n_points - 1)
    if tcfg.indices is not None:
        g = timesteps_from_indices(ns, list(tcfg.indices))
        return check_timesteps(ns, g, n_points - 1)
    if tcfg.discretization is not None:
        from ld3.discretizations import get_timesteps

        opts = dict(tcfg.discretization_options or {})
        return get_timesteps(tcfg.discretization, ns, steps, solver=solver, **opts).detach().cpu().double()
    return default_timesteps(ns, n_points - 1)


def _single_uncond(uncond: Any) -> Any:
    """TimeTuner takes one unconditional condition for the whole run: every row must be the same."""
    if uncond is None:
        return None
    if isinstance(uncond, torch.Tensor):
        if uncond.dim() > 0 and not bool((uncond == uncond[:1]).all()):
            raise ValueError("TimeTuner needs one unconditional condition for all samples; the teacher data "
                             "has several different ones")
        return uncond[:1] if uncond.dim() > 0 else uncond
    raise ValueError(f"TimeTuner through main.py supports tensor conditions only, got {type(uncond).__name__}")


def run_timetuner(cfg: Any, data: LD3Data | None = None, loaded: Any = None, on_step: Any = None) -> Dict[str, Any]:
    """Run TimeTuner as configured (``learner=timetuner``); ``data``/``loaded`` may be given directly."""
    from ld3.learners import pipeline as pl
    from ld3.logging import make_logger

    c = pl.to_plain(cfg)
    lraw = dict(c.get("learner") or {})
    log_path = lraw.pop("log_path", None) or "runs"
    lname = lraw.pop("name", "timetuner")
    if lname != "timetuner":
        raise ValueError(f"run_timetuner runs TimeTuner; learner={lname!r} is not TimeTuner (use run_learner)")
    tcfg = TimeTunerRunConfig.from_dict(lraw)
    su = pl.prepare_run(c, loaded)
    latent_x0 = su.loaded.decode is not None and tcfg.objective == "ddim_step"
    if latent_x0 and data is not None:
        raise ValueError(f"model {su.mcfg['name']!r} is a latent model: objective=ddim_step noises x_0 in its latent "
                         "space, which in-memory (pixel) teacher data lacks; let run_timetuner load the teacher data "
                         "or use learner.objective=solver_output")
    if on_step is not None:
        raise ValueError("run_timetuner does not take on_step (it has no LD3 trainer)")
    grid = None if tcfg.discretization == BEST_HANDCRAFTED else base_grid(tcfg, su.solver, su.steps)
    name = run_name(su.scfg["name"], su.steps, tcfg, su.loss_label, su.seed)
    run_dir = Path(log_path) / name
    fp_obj = su.fingerprint_inputs({"name": "timetuner", **tcfg.to_dict()})
    fp = pl.fingerprint(fp_obj)
    done = pl.finished_result(run_dir, fp, fp_obj)
    if done is not None:
        return done
    data_root = "<in memory>"
    if data is None:
        data, data_root = pl.load_teacher_data(c, su.loaded, tcfg.num_train + tcfg.num_valid + tcfg.num_test,
                                               su.device)
    x0 = None
    if latent_x0:  # ddim_step on a latent model: the teacher's own final latents of the same seeds are the x_0
        x0 = _latent_teacher_x0(c, su.loaded, data, data_root, su.device)
    handler = pl.start_run_dir(c, run_dir, fp, fp_obj)
    logger = make_logger(c.get("logger") or {"backend": "disabled"}, run_config=c, run_name=name)
    try:
        return _run(su, tcfg, grid, run_dir, data, data_root, logger, x0)
    finally:
        logger.finish()
        log.removeHandler(handler)
        handler.close()


def _latent_teacher_x0(c: Dict[str, Any], loaded: Any, data: LD3Data, pixel_root: str,
                       device: torch.device) -> torch.Tensor:
    """The teacher's final latents (``img_space: latent``, a teacher directory of its own) for the pairs of
    ``data``: the same seeds, checked by their unit-normal latents; stored next to the pixel teacher data at
    ``pixel_root`` as ``<pixel_root>_latent``. Latent models only."""
    from ld3.data import TeacherDataset, ensure_teacher_data

    n = len(data)
    path = ensure_teacher_data(c, model=loaded, num_samples=n, device=device, img_space="latent",
                               out_dir=f"{pixel_root}_latent")
    ds = TeacherDataset(path, limit=n)
    if len(ds) < n or ds.img_space != "latent":
        raise ValueError(f"teacher data at {path} has {len(ds)} samples in img_space={ds.img_space!r}; TimeTuner "
                         f"(ddim_step) on a latent model needs {n} in img_space='latent'")
    items = [ds[i] for i in range(n)]
    if not torch.equal(torch.stack([it["latent"] for it in items]), data.latents.cpu()):
        raise ValueError(f"the latent teacher data at {path} was drawn from other seeds than the pixel teacher "
                         "data of the run")
    return torch.stack([it["img"] for it in items])


def _run(su: Any, tcfg: TimeTunerRunConfig, grid: torch.Tensor | None, run_dir: Path, data: LD3Data,
         data_root: str, logger: Any, x0: torch.Tensor | None = None) -> Dict[str, Any]:
    from ld3.learners import pipeline as pl

    loaded, solver, device = su.loaded, su.solver, su.device
    train, valid, _, eval_split, held_out = pl.split_for_eval(data, tcfg.num_train, tcfg.num_valid, tcfg.num_test)
    make_fn = pl.model_fn_factory(loaded, su.mcfg)
    ev = dict(decode=loaded.decode, batch_size=tcfg.eval_batch_size, device=device)
    base = "configured"
    if grid is None:  # best_handcrafted: the hand-crafted grid with the lowest validation loss (original latents)
        sel = valid if len(valid) else train
        grids = pl.handcrafted_grids(loaded.noise_schedule, su.steps, solver)
        scores = {k: evaluate_grid(solver, make_fn, su.loss_fn, sel, g, **ev)["loss"] for k, g in grids.items()}
        base = min(scores, key=scores.get)
        grid = grids[base]
        log.info("TimeTuner base grid on validation: " + ", ".join(f"{k} {v:.6g}" for k, v in scores.items())
                 + f" -> {base}")
    if tcfg.objective == "solver_output":
        tried = {}
        for rule, su_rule in conversion_setups(su, tcfg).items():
            tried[rule] = (su_rule, _tune_solver_output(su_rule, tcfg, grid, run_dir, train, valid, make_fn, logger))
        rule = min(tried, key=lambda k: tried[k][1][3]["valid_loss_tuned"])  # first (the configured rule) on ties
        su, (t1, t2, history, extra) = tried[rule]
        if len(tried) > 1:
            extra["valid_loss_by_convert_at"] = {k: v[1][3]["valid_loss_tuned"] for k, v in tried.items()}
            log.info("TimeTuner convert_at on validation: " + ", ".join(
                f"{k} {v:.6g}" for k, v in extra["valid_loss_by_convert_at"].items()) + f" -> {rule}")
    else:
        su = next(iter(conversion_setups(su, tcfg).values()))
        x0_train = train.targets if x0 is None else x0[:len(train)]
        t1, t2, history, extra = _tune_ddim_step(su, tcfg, grid, run_dir, train, valid, make_fn, logger, data_root,
                                                 x0_train)
    extra["base_grid"] = base
    if hasattr(su.solver, "convert_at"):
        extra["convert_at"] = su.solver.convert_at
    report, grids = pl.held_out_report(su, make_fn, held_out, eval_split, t1, t2, tcfg.eval_batch_size)
    return pl.finish_run(
        su, run_dir, logger, "timetuner", t1, t2, report, grids, history, extra=extra,
        disc_config={"learner": {"name": "timetuner", **tcfg.to_dict()}, "t_ratios": extra["t_ratios"],
                     "loss": su.loss_label, "seed": su.seed},
        disc_metrics={k: extra[k] for k in ("valid_loss_base", "valid_loss_tuned") if k in extra},
        samples=(make_fn, held_out),
    )


def _tune_ddim_step(su: Any, tcfg: TimeTunerRunConfig, grid: torch.Tensor, run_dir: Path, train: LD3Data,
                    valid: LD3Data, make_fn: Any, logger: Any, data_root: str, x0_train: torch.Tensor):
    """The paper's objective: per-step DDIM tuning (:meth:`TimeTuner.optimize_timesteps`) on the x_0 samples
    ``x0_train`` (the model space: the teacher's outputs, its latents for latent models)."""
    loaded, solver, device = su.loaded, su.solver, su.device
    gtype, gscale = su.mcfg.get("guidance_type"), su.mcfg.get("guidance_scale")
    ev = dict(decode=loaded.decode, batch_size=tcfg.eval_batch_size, device=device)
    model_fn = loaded.model_fn(guidance_type=gtype, guidance_scale=gscale)
    labels = train.conditions if isinstance(train.conditions, torch.Tensor) else None
    if train.conditions is not None and labels is None:
        raise ValueError("TimeTuner through main.py supports tensor conditions (class labels) only")
    uncond = _single_uncond(train.unconditions)
    step_kwargs: Dict[str, Any] = {"eta": tcfg.eta}
    if uncond is not None:
        step_kwargs["uncond_condition"] = uncond.to(device)
    tuner = TimeTuner(model_fn, loaded.noise_schedule, device=device)
    loader = dict_loader(x0_train, labels, batch_size=min(tcfg.batch_size, len(train)), seed=tcfg.seed)
    n = grid.numel() - 1
    log.info(f"TimeTuner run {run_dir.name}: model {su.mcfg['name']}, solver {solver.name}, NFE {su.steps} "
             f"({n} tuned DDIM steps), {tcfg.tune_type}, lr {tcfg.lr}, {tcfg.total_iters} batches of "
             f"{loader.batch_size} per step, loss {su.loss_label}, device {device}, data {data_root}")
    gen = torch.Generator(device=device).manual_seed(tcfg.seed)
    t0 = time.time()
    ratios, hist = tuner.optimize_timesteps(
        loader, num_steps=n, tune_type=tcfg.tune_type, lr=tcfg.lr, total_iters=tcfg.total_iters,
        verbose=tcfg.verbose and bool(su.c.get("progress", True)), timesteps=grid, use_labels=tcfg.use_labels,
        noise_generator=gen, return_history=True, **step_kwargs,
    )
    train_time = time.time() - t0
    t1 = grid.clone()
    t2 = tuned_model_timesteps(t1, ratios)
    history: List[Dict[str, Any]] = []
    it = 0
    for step_i, (losses, rs) in enumerate(zip(hist["loss"], hist["ratio"], strict=True)):
        for loss_v, r in zip(losses, rs, strict=True):
            it += 1
            history.append({"kind": "train", "iter": it, "step": step_i, "train_loss": loss_v, "ratio": r})
            logger.log({"train_loss": loss_v, "ratio": r, "tuned_step": step_i}, step=it)
    extra: Dict[str, Any] = {"t_ratios": ratios.tolist(), "steps_trained": it, "train_time_s": train_time,
                             "tune_type": tcfg.tune_type, "objective": tcfg.objective}
    if len(valid):  # validation distance to the teacher of the base grid and of the tuned one (recorded only)
        extra["valid_loss_base"] = evaluate_grid(solver, make_fn, su.loss_fn, valid, t1, **ev)["loss"]
        extra["valid_loss_tuned"] = evaluate_grid(solver, make_fn, su.loss_fn, valid, t1, t2, **ev)["loss"]
    extra["returned"] = "learned"
    if len(valid) and extra["valid_loss_tuned"] > extra["valid_loss_base"]:
        # as LD3: never a grid worse on validation than the start (here: the base grid, all ratios 1)
        log.info(f"the tuned times are worse on validation than the base grid ({extra['valid_loss_tuned']:.6g} > "
                 f"{extra['valid_loss_base']:.6g}): returning the base grid")
        t2 = t1.clone()
        extra["returned"] = "start"
        extra["tuned_t_ratios"] = extra["t_ratios"]
        extra["t_ratios"] = [1.0] * len(extra["t_ratios"])
    return t1, t2, history, extra


def conversion_setups(su: Any, tcfg: TimeTunerRunConfig) -> Dict[str, Any]:
    """The run setups (solvers) that ``learner.convert_at`` asks to try, keyed by conversion rule; the solver's own
    rule first. One entry, the run's own solver, for solvers without a ``convert_at`` option."""
    own = getattr(su.solver, "convert_at", None)
    if own is None or tcfg.convert_at == "solver":
        return {own or "n/a": su}
    if tcfg.convert_at == "auto":
        rules = [own, *[r for r in CONVERT_AT if r != own]] if tcfg.objective == "solver_output" else ["grid_time"]
    else:
        rules = [tcfg.convert_at]
    return {rule: su if rule == own else su.with_solver_options(convert_at=rule) for rule in rules}


def _tune_solver_output(su: Any, tcfg: TimeTunerRunConfig, grid: torch.Tensor, run_dir: Path, train: LD3Data,
                        valid: LD3Data, make_fn: Any, logger: Any):
    """Ours: all ratios jointly through the run's solver to the teacher's samples (ld3/learners/timetuner_output.py)."""
    from ld3.learners.timetuner_output import tune_ratios_solver_output

    bs = min(tcfg.batch_size, len(train))
    rule = getattr(su.solver, "convert_at", None)
    log.info(f"TimeTuner run {run_dir.name}: model {su.mcfg['name']}, solver {su.solver.name}"
             + (f" (convert_at {rule})" if rule else "") + f", NFE {su.steps} "
             f"({grid.numel() - 1} tuned ratios), objective solver_output, lr {tcfg.lr}, {tcfg.total_iters} "
             f"batches of {bs}, validation every {tcfg.valid_every}, loss {su.loss_label}, device {su.device}")

    def on_iter(row: Dict[str, Any]) -> None:
        logger.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["iter"])

    t0 = time.time()
    ratios, info = tune_ratios_solver_output(
        su.solver, make_fn, su.loss_fn, train, valid, grid, lr=tcfg.lr, total_iters=tcfg.total_iters, batch_size=bs,
        valid_every=tcfg.valid_every, seed=tcfg.seed, decode=su.loaded.decode, eval_batch_size=tcfg.eval_batch_size,
        device=su.device, on_iter=on_iter,
    )
    t1 = grid.clone()
    t2 = tuned_model_timesteps(t1, ratios)
    kept = info["best_iter"] == 0
    if kept:
        log.info(f"no tuned ratios beat the base grid on validation ({info['valid_loss_base']:.6g}): returning it")
    extra: Dict[str, Any] = {
        "t_ratios": ratios.tolist(), "steps_trained": tcfg.total_iters, "train_time_s": time.time() - t0,
        "objective": tcfg.objective, "best_iter": info["best_iter"], "returned": "start" if kept else "learned",
        "valid_loss_base": info["valid_loss_base"], "valid_loss_tuned": info["valid_loss_tuned"],
    }
    return t1, t2, info["history"], extra
