"""An LD3 run from a config: model, solver, loss, teacher data, training, outputs and the final report.

``run_ld3(cfg)`` is what ``main.py`` calls with the Hydra config (see ``configs/config.yaml``). A run
lives in ``{learner.log_path}/{solver}-N{steps}-b{bound}-{loss}-lr2{lr2}rv1{rv1}-rv2{rv2}-seed{seed}``
(the reference's name, plus ``-no_v1_only_v2`` / ``-match_prior``) and holds:

* ``config.yaml`` (the resolved config) and ``fingerprint.json`` (what decides the results),
* ``log.txt``, ``checkpoint.pt`` (atomic, after every step: an interrupted run resumes from it),
* ``best_v2.pt`` (and ``best_v1.pt``) in the reference's format, ``discretization.json`` (our format),
* ``history.json``, ``training_curve.png``, ``schedule.png`` (lambda(t_i) beside logSNR / EDM / time
  uniform / time quadratic),
* ``result.json``: held-out distance to the teacher of the learned grid and of every hand-crafted one.

A run whose ``result.json`` exists is skipped on rerun (its result is returned). A run directory made
with a different fingerprint is never reused silently: a ValueError names both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch
from tqdm.auto import tqdm

from ld3.learners.ld3 import (
    LD3Config,
    LD3Data,
    LD3Trainer,
    evaluate_grid,
    resolve_hyper,
    split_data,
)
from ld3.learners.losses import get_loss
from ld3.utils.console import TqdmLoggingHandler
from ld3.utils.io import atomic_write_json, atomic_write_text
from ld3.utils.plain import to_plain
from ld3.utils.runtime import move_model

log = logging.getLogger("ld3.learner")

HANDCRAFTED = ("time_uniform", "time_quadratic", "logSNR", "edm")
#: teacher keys that change how the data is produced or where it lives, not what it is (not fingerprinted)
_TEACHER_RUN_KEYS = ("data_dir", "sampling_batch_size", "device", "progress", "low_gpu")
#: ``learner.prior.kind`` that starts from the best hand-crafted grid on the validation pairs (ours)
BEST_HANDCRAFTED = "best_handcrafted"


# ============================================================================================ helpers
_plain = to_plain  # the shared helper (ld3/utils/plain.py)


def run_name(solver: str, steps: int, hyper: Dict[str, float], loss: str, lcfg: LD3Config, seed: int) -> str:
    """The reference's run directory name (``utils.create_desc``)."""
    name = (
        f"{solver}-N{steps}-b{hyper['prior_bound']}-{loss}-lr2{hyper['lr_time_2']}"
        f"rv1{lcfg.training_rounds_v1}-rv2{lcfg.training_rounds_v2}-seed{seed}"
    )
    if lcfg.no_v1:
        name += "-no_v1_only_v2"
    if lcfg.match_prior:
        name += "-match_prior"
    return name


def fingerprint(obj: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setup_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%m/%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_ld3", False) for h in log.handlers):  # one console handler per process
        sh = TqdmLoggingHandler(sys.stdout)  # lines above the progress bar, not through it
        sh.setFormatter(logging.Formatter("[ld3] %(message)s"))
        sh.setLevel(logging.INFO)
        sh._ld3 = True  # type: ignore[attr-defined]
        log.addHandler(sh)
        log.propagate = False  # Hydra's root handlers would print every line twice
    return handler


def model_fn_factory(loaded: Any, mcfg: Dict[str, Any]) -> Callable[[Any, Any], Callable[..., torch.Tensor]]:
    """(condition, unconditional_condition) -> the model's noise-prediction function (guidance from config)."""
    gtype = mcfg.get("guidance_type")
    gscale = mcfg.get("guidance_scale")
    cache: Dict[str, Any] = {}

    def make(cond: Any, uncond: Any) -> Callable[..., torch.Tensor]:
        if cond is None and uncond is None:
            if "uncond" not in cache:
                cache["uncond"] = loaded.model_fn(guidance_type=gtype, guidance_scale=gscale)
            return cache["uncond"]
        return loaded.model_fn(guidance_type=gtype, guidance_scale=gscale, condition=cond,
                               unconditional_condition=uncond)

    return make


def handcrafted_grids(noise_schedule: Any, steps: int, solver: Any, kinds=HANDCRAFTED) -> Dict[str, torch.Tensor]:
    from ld3.discretizations import get_timesteps

    return {k: get_timesteps(k, noise_schedule, steps, solver=solver).detach().cpu().double() for k in kinds}


def prior_grid(
    pcfg: Dict[str, Any], loaded: Any, solver: Any, steps: int, mcfg: Dict[str, Any] | None = None,
    device: Any = None,
) -> torch.Tensor:
    """The grid ``match_prior`` fits: explicit ``prior.timesteps`` (in ``prior.time_unit``) or a kind."""
    ns = loaded.noise_schedule
    ts = pcfg.get("timesteps")
    if ts is not None:
        t = torch.as_tensor(list(ts), dtype=torch.float64)
        return ns.time_from_unit(t, pcfg.get("time_unit", "t"))
    from ld3.discretizations import get_timesteps
    from ld3.discretizations.gits import with_model_options

    kind = pcfg.get("kind", "gits")
    mcfg = mcfg or {}
    opts = with_model_options(kind, dict(pcfg.get("options") or {}), loaded, device, mcfg.get("guidance_type"),
                              mcfg.get("guidance_scale"))
    return get_timesteps(kind, ns, steps, solver=solver, **opts).detach().cpu().double()


def choose_start(
    lcfg: LD3Config, trainer: LD3Trainer, loaded: Any, solver: Any, steps: int, mcfg: Dict[str, Any],
    device: Any, valid_loss: Callable[..., float],
) -> Dict[str, Any]:
    """Set the trainer's start grid and describe it: ``{kind, t1, t2, valid_loss, candidates}``.

    ``match_prior``: the prior (a kind, an explicit list, or ``best_handcrafted``). Otherwise ``init``:
    ``reference`` keeps the reference start; ``auto`` (ours) takes the better, by validation loss on the
    original latents, of the reference start and the best hand-crafted grid.
    """
    cands: Dict[str, float] = {}
    kind = "reference"
    if lcfg.match_prior:
        pcfg = dict(lcfg.prior)
        if str(pcfg.get("kind")).lower() == BEST_HANDCRAFTED:
            grids = handcrafted_grids(loaded.noise_schedule, steps, solver)
            cands = {k: valid_loss(g) for k, g in grids.items()}
            kind = min(cands, key=cands.get)
            log.info("match_prior best_handcrafted on validation: " + ", ".join(
                f"{k} {v:.6g}" for k, v in cands.items()) + f" -> {kind}")
            trainer.match_prior(grids[kind])
        else:
            kind = f"prior:{pcfg.get('kind') if pcfg.get('timesteps') is None else 'timesteps'}"
            trainer.match_prior(prior_grid(pcfg, loaded, solver, steps, mcfg, device))
    elif lcfg.init == "auto":
        t1, t2 = (t.detach().cpu() for t in trainer.timesteps())
        cands = {"reference": valid_loss(t1, t2)}
        grids = handcrafted_grids(loaded.noise_schedule, steps, solver)
        cands.update({k: valid_loss(g) for k, g in grids.items()})
        kind = min(cands, key=cands.get)
        log.info("start (init auto) on validation: " + ", ".join(f"{k} {v:.6g}" for k, v in cands.items())
                 + f" -> {kind}")
        if kind != "reference":
            trainer.match_prior(grids[kind])
    t1, t2 = (t.detach().cpu().double() for t in trainer.timesteps())
    return {"kind": kind, "t1": t1.tolist(), "t2": t2.tolist(), "valid_loss": valid_loss(t1, t2),
            "candidates": cands}


# ============================================================================================ teacher data
def load_teacher_data(cfg: Dict[str, Any], loaded: Any, needed: int, device: torch.device) -> Tuple[LD3Data, str]:
    """Make sure the teacher data exists (``ld3.data.ensure_teacher_data``: generated on the fly when
    absent, extended when too small) and load its first ``needed`` pairs."""
    from ld3.data import TeacherDataset, ensure_teacher_data

    path = ensure_teacher_data(cfg, model=loaded, num_samples=needed, device=device)
    ds = TeacherDataset(path, limit=needed)
    if len(ds) < needed:
        raise ValueError(f"teacher data at {path} has {len(ds)} samples; the learner needs {needed}")
    if ds.img_space != "pixel" and loaded.decode is not None:
        raise ValueError(f"teacher data at {path} stores latents (img_space={ds.img_space!r}); the learner "
                         "compares decoded pixels: regenerate it with img_space=pixel")
    items = [ds[i] for i in range(needed)]
    lat = torch.stack([it["latent"] for it in items])
    tgt = torch.stack([it["img"] for it in items])
    cond = [it["cond"] for it in items]
    uncond = [it["uncond"] for it in items]
    conds = None if all(x is None for x in cond) else _stack(cond)
    unconds = None if all(x is None for x in uncond) else _stack(uncond)
    return LD3Data(lat, tgt, conds, unconds), str(path)


def _stack(xs):
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.stack([torch.as_tensor(x) for x in xs])
    return list(xs)


def _save_samples(path, solver, make_fn, data, decode, device, t1, t2, best_grid, best_name, title, learned_name,
                  n=8) -> None:
    """``samples.png``: the teacher, the learned grid and the best hand-crafted grid on the same latents."""
    from ld3.learners.plots import plot_sample_rows

    k = min(n, len(data))
    idx = torch.arange(k)
    cond, uncond = data.cond(idx, device)
    fn = make_fn(cond, uncond)
    x_T = data.latents[idx].to(device) * solver.noise_schedule.prior_scale
    with torch.no_grad():
        outs = {learned_name: solver.sample(fn, x_T, t1.to(device), model_timesteps=t2.to(device)),
                best_name: solver.sample(fn, x_T, best_grid.to(device))}
        if decode is not None:
            outs = {name: decode(x) for name, x in outs.items()}
    rows = {"teacher": data.targets[idx]}
    rows.update({name: x.detach().cpu() for name, x in outs.items()})
    if rows["teacher"].dim() != 4 or rows["teacher"].shape[1] not in (1, 3):
        return  # not images (e.g. analytic models)
    plot_sample_rows(rows, path, title=title)


# ============================================================================================ run
@dataclass
class RunSetup:
    """What every learner run needs: the resolved config, model, solver and loss (``prepare_run``)."""

    c: Dict[str, Any]
    steps: int
    seed: int
    device: torch.device
    mcfg: Dict[str, Any]
    scfg: Dict[str, Any]
    loaded: Any
    solver: Any
    loss_fn: Any
    loss_name: str
    loss_opts: Dict[str, Any]
    loss_label: str

    def with_solver_options(self, **changes: Any) -> "RunSetup":
        """This setup with the solver rebuilt from its config options updated by ``changes`` (config too)."""
        from dataclasses import replace

        from ld3.solvers import get_solver

        opts = {**dict(self.scfg.get("options") or {}), **changes}
        solver = get_solver(self.scfg["name"], self.loaded.noise_schedule, **opts)
        return replace(self, solver=solver, scfg={**self.scfg, "options": opts})

    @property
    def latent_dim(self) -> int:
        n = 1
        for s in self.loaded.shape:
            n *= int(s)
        return n

    def fingerprint_inputs(self, learner: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "model": self.mcfg,
            "weights": (getattr(self.loaded, "metadata", None) or {}).get("checksums"),  # retrained -> new run
            "solver": self.scfg,
            "steps": self.steps,
            "seed": self.seed,
            "loss": {"name": self.loss_name, **self.loss_opts},
            "learner": learner,
            "teacher": {k: v for k, v in dict(self.c.get("teacher") or {}).items() if k not in _TEACHER_RUN_KEYS},
        }


def prepare_run(cfg: Any, loaded: Any = None) -> RunSetup:
    """Resolve the config; load the model (unless given), the solver and the loss (before any data work)."""
    from ld3.models.zoo import load_model
    from ld3.solvers import get_solver
    from ld3.utils import resolve_device, seed_everything

    c = _plain(cfg)
    steps = int(c["steps"])
    seed = int(c.get("seed", 0))
    device = resolve_device(str(c.get("device", "auto")))
    mcfg = dict(c["model"])
    scfg = dict(c["solver"])
    seed_everything(seed)
    if loaded is None:
        loaded = load_model(mcfg["name"], **dict(mcfg.get("options") or {}))
    move_model(loaded, device)
    solver = get_solver(scfg["name"], loaded.noise_schedule, **dict(scfg.get("options") or {}))
    # the loss first: a missing LPIPS backbone must fail before any data generation or training
    lossc = dict(c.get("loss") or {"name": mcfg.get("default_loss", "l2")})
    loss_name = lossc.pop("name")
    loss_fn = get_loss(loss_name, model=loaded, **lossc).to(device)
    return RunSetup(c, steps, seed, device, mcfg, scfg, loaded, solver, loss_fn, loss_name, lossc,
                    getattr(loss_fn, "name", loss_name))


def finished_result(run_dir: Path, fp: str, fp_obj: Dict[str, Any] | None = None) -> Dict[str, Any] | None:
    """The result of a finished run in ``run_dir`` (None if unfinished); refuse a different fingerprint."""
    if run_dir.exists() and (run_dir / "fingerprint.json").is_file():
        old = json.loads((run_dir / "fingerprint.json").read_text())
        if old.get("fingerprint") != fp:
            from ld3.data.config import diff_identity

            diffs = diff_identity(old.get("inputs") or {}, json.loads(json.dumps(fp_obj, default=str)))
            raise ValueError(
                f"run directory {run_dir} was made with a different configuration ("
                + ("; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "") if diffs else f"fingerprint "
                   f"{old.get('fingerprint')} != {fp}")
                + "); delete it or set learner.log_path elsewhere"
            )
    result_path = run_dir / "result.json"
    if result_path.is_file():
        res = json.loads(result_path.read_text())
        print(f"[ld3] {run_dir} is already finished; skipping (delete result.json to rerun)")
        res["skipped"] = True
        return res
    return None


def start_run_dir(c: Dict[str, Any], run_dir: Path, fp: str, fp_obj: Dict[str, Any]) -> logging.Handler:
    """Create the run directory with its fingerprint, resolved config and log file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "fingerprint.json", {"fingerprint": fp, "inputs": fp_obj})
    try:
        from omegaconf import OmegaConf

        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(c)))
    except ImportError:  # pragma: no cover
        atomic_write_json(run_dir / "config.json", c)
    return _setup_file_log(run_dir)


def held_out_report(
    su: RunSetup, make_fn: Any, held_out: LD3Data, eval_split: str, t1: torch.Tensor, t2: torch.Tensor,
    batch_size: int,
) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Held-out distance to the teacher of the learned grid (t1 with network times t2, and t1 alone) and
    of every hand-crafted grid (original latents, no ball moves)."""
    solver, steps = su.solver, su.steps
    grids = handcrafted_grids(su.loaded.noise_schedule, steps, solver)
    ev = dict(make_model_fn=make_fn, loss_fn=su.loss_fn, data=held_out, decode=su.loaded.decode,
              batch_size=batch_size, device=su.device)
    learned = evaluate_grid(solver, timesteps=t1, model_timesteps=t2, **ev)
    learned_t1_only = evaluate_grid(solver, timesteps=t1, **ev)
    hand = {k: evaluate_grid(solver, timesteps=g, **ev) for k, g in grids.items()}
    best_k = min(hand, key=lambda k: hand[k]["loss"])
    best_v = hand[best_k]["loss"]
    improvement = 1.0 - learned["loss"] / best_v if best_v > 0 else 0.0
    log.info(f"held-out ({eval_split}, n={held_out.latents.shape[0]}) {su.loss_label}: learned "
             f"{learned['loss']:.6g}; " + ", ".join(f"{k} {v['loss']:.6g}" for k, v in hand.items())
             + f"; vs best hand-crafted ({best_k}): {100 * improvement:+.1f}%")
    return {
        "eval_split": eval_split,
        "n_eval": int(held_out.latents.shape[0]),
        "learned": learned["loss"],
        "learned_std": learned["loss_std"],
        "learned_t1_only": learned_t1_only["loss"],
        "handcrafted": {k: v["loss"] for k, v in hand.items()},
        "best_handcrafted": best_k,
        "best_handcrafted_value": best_v,
        "improvement_vs_best": improvement,
    }, grids


def finish_run(
    su: RunSetup, run_dir: Path, logger: Any, task: str, t1: torch.Tensor, t2: torch.Tensor,
    report: Dict[str, Any], grids: Dict[str, torch.Tensor], history: Any, extra: Dict[str, Any],
    disc_config: Dict[str, Any], disc_metrics: Dict[str, Any], samples: Tuple[Any, LD3Data] | None = None,
) -> Dict[str, Any]:
    """Write discretization.json, history.json, the plots (schedule, training curve and, given ``samples`` =
    (model-function factory, held-out data), a sample grid), result.json and the results-store row."""
    from ld3.discretizations import save as save_disc
    from ld3.learners.plots import plot_schedule, plot_training_curve

    metrics = {"eval_split": report["eval_split"], su.loss_label: report["learned"], **disc_metrics}
    if hasattr(su.solver, "convert_at"):  # the learned t2 means something only with the rule it was learned with
        disc_config = {**disc_config, "solver_options": {"convert_at": su.solver.convert_at}}
    save_disc(run_dir / "discretization.json", t1, model=su.mcfg["name"], solver=su.solver.name, nfe=su.steps,
              model_timesteps=t2, time_unit="t", source=f"learned:{task}", metrics=metrics, config=disc_config)
    atomic_write_json(run_dir / "history.json", history)
    title = f"{su.mcfg['name']} {su.solver.name} NFE {su.steps} ({su.loss_label}, {task})"
    plot_training_curve(history, run_dir / "training_curve.png", title=title)
    plot_schedule(su.loaded.noise_schedule, t1, t2, {k: grids[k] for k in ("logSNR", "edm", "time_uniform",
                                                                             "time_quadratic")},
                  run_dir / "schedule.png", title=title,
                  scores={"learned": report["learned"], **report["handcrafted"]})
    if samples is not None:
        make_fn, held_out = samples
        best_k = report["best_handcrafted"]
        _save_samples(run_dir / "samples.png", su.solver, make_fn, held_out, su.loaded.decode, su.device, t1, t2,
                      grids[best_k], best_k,
                      f"{title}: held-out samples; {su.loss_label} to the teacher: learned {report['learned']:.4g}, "
                      f"{best_k} {report['best_handcrafted_value']:.4g}", learned_name=f"learned ({task})")
    result = {
        "task": task,
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "model": su.mcfg["name"],
        "solver": su.solver.name,
        "nfe": su.steps,
        "loss": su.loss_label,
        "seed": su.seed,
        **report,
        **extra,
        "timesteps": t1.tolist(),
        "model_timesteps": t2.tolist(),
    }
    logger.log_result({k: v for k, v in result.items() if k not in ("timesteps", "model_timesteps")})
    atomic_write_json(run_dir / "result.json", result)
    log.info(f"{task} finished: {run_dir / 'discretization.json'}")
    return result


def split_for_eval(data: LD3Data, num_train: int, num_valid: int, num_test: int):
    """(train, valid, test, eval split name, held-out data): test if any, else valid, else train."""
    train, valid, test = split_data(data, num_train, num_valid, num_test)
    eval_split = "test" if len(test) > 0 else ("valid" if len(valid) > 0 else "train")
    held_out = test if len(test) > 0 else (valid if len(valid) > 0 else train)
    return train, valid, test, eval_split, held_out


def run_ld3(
    cfg: Any,
    data: LD3Data | None = None,
    loaded: Any = None,
    on_step: Callable[[LD3Trainer], None] | None = None,
) -> Dict[str, Any]:
    """Run LD3 as configured (``data``/``loaded`` may be given directly, e.g. by tests and scripts)."""
    from ld3.logging import make_logger

    c = _plain(cfg)
    lraw = dict(c.get("learner") or {})
    log_path = lraw.pop("log_path", None) or "runs"
    lname = lraw.pop("name", "ld3")
    if lname != "ld3":
        raise ValueError(f"run_ld3 runs the LD3 learner; learner={lname!r} is not LD3 (use run_learner)")
    lcfg = LD3Config.from_dict(lraw)
    su = prepare_run(c, loaded)
    hyper = resolve_hyper(lcfg, su.steps, su.latent_dim)
    name = run_name(su.scfg["name"], su.steps, hyper, su.loss_label, lcfg, su.seed)
    run_dir = Path(log_path) / name
    fp_obj = su.fingerprint_inputs(lcfg.to_dict())
    fp = fingerprint(fp_obj)
    done = finished_result(run_dir, fp, fp_obj)
    if done is not None:
        return done
    data_root = "<in memory>"
    if data is None:  # before the run directory exists: a failure here leaves nothing behind
        needed = lcfg.num_train + lcfg.num_valid + lcfg.num_test
        t_data = time.time()
        data, data_root = load_teacher_data(c, su.loaded, needed, su.device)
        data_time = time.time() - t_data
    else:
        data_time = 0.0
    handler = start_run_dir(c, run_dir, fp, fp_obj)
    logger = make_logger(c.get("logger") or {"backend": "disabled"}, run_config=c, run_name=name)
    try:
        return _run(su, lcfg, run_dir, data, data_root, logger, on_step, hyper, data_time)
    finally:
        logger.finish()
        log.removeHandler(handler)
        handler.close()


def _run(su: RunSetup, lcfg, run_dir, data, data_root, logger, on_step, hyper, data_time=0.0):
    c, loaded, solver, loss_fn, steps, seed, device = (su.c, su.loaded, su.solver, su.loss_fn, su.steps, su.seed,
                                                        su.device)
    mcfg = su.mcfg
    loss_label = su.loss_label
    make_fn = model_fn_factory(loaded, mcfg)
    decode = loaded.decode
    train, valid, test, eval_split, held_out = split_for_eval(data, lcfg.num_train, lcfg.num_valid, lcfg.num_test)
    trainer = LD3Trainer(
        lcfg, solver, steps, make_fn, loss_fn, train, valid if len(valid) else None, decode=decode,
        run_dir=run_dir, device=device, seed=seed, on_step=on_step,
        metrics_fn=lambda row: logger.log({k: v for k, v in row.items() if isinstance(v, (int, float))},
                                          step=row.get("iter")),
    )
    log.info(f"LD3 run {run_dir.name}: model {mcfg['name']}, solver {solver.name}, NFE {steps} "
             f"({solver.num_timesteps(steps)} grid points), time_mode {trainer.time_mode}, loss {loss_label}, "
             f"device {device}, data {data_root}; "
             f"prior_bound {hyper['prior_bound']}, shift_lr {hyper['shift_lr']}, lr2 {hyper['lr_time_2']}")
    resumed = trainer.try_resume()
    per_round = -(-lcfg.num_train // lcfg.main_train_batch_size)
    total = per_round * trainer.total_rounds
    if lcfg.max_iters is not None:
        total = min(total, int(lcfg.max_iters))
    bar = tqdm(total=total, initial=trainer.state["iter"], unit="step", desc=f"LD3 {run_dir.name}",
               disable=not c.get("progress", True), leave=False)

    def step_hook(t: LD3Trainer) -> None:
        bar.update(t.state["iter"] - bar.n)
        bar.set_postfix(best=f"{t.state['best_loss']:.4g}", round=t.state["round"])
        if on_step is not None:
            on_step(t)

    trainer.on_step = step_hook
    sel = valid if len(valid) else train  # what the trainer validates on (original latents here)

    def valid_loss(t1: torch.Tensor, t2: torch.Tensor | None = None) -> float:
        return evaluate_grid(solver, make_fn, loss_fn, sel, t1, t2, decode=decode, batch_size=lcfg.eval_batch_size,
                             device=device)["loss"]

    if not resumed:
        start = choose_start(lcfg, trainer, loaded, solver, steps, mcfg, device, valid_loss)
        trainer.state["start"] = start  # checkpointed: a resumed run keeps its start
    start = trainer.state.get("start") or {  # a checkpoint written before starts were recorded
        "kind": "unknown (resumed)", "t1": None, "t2": None, "valid_loss": math.inf, "candidates": {}}
    t0 = time.time()
    try:
        state = trainer.train()
    finally:
        bar.close()
    train_time = time.time() - t0 + (state.get("elapsed_s", 0.0) if resumed else 0.0)
    t1, t2 = trainer.best_timesteps()
    # never worse than the start on validation (original latents): otherwise return the start
    valid_learned = valid_loss(t1, t2)
    returned = "learned"
    if valid_learned > start["valid_loss"]:
        returned = "start"
        t1 = torch.tensor(start["t1"], dtype=torch.float64)
        t2 = torch.tensor(start["t2"], dtype=torch.float64)
        log.info(f"the learned grid is worse on validation than its start ({valid_learned:.6g} > "
                 f"{start['valid_loss']:.6g}): returning the start ({start['kind']})")

    t_eval = time.time()
    report, grids = held_out_report(su, make_fn, held_out, eval_split, t1, t2, lcfg.eval_batch_size)
    eval_time = time.time() - t_eval
    return finish_run(
        su, run_dir, logger, "ld3", t1, t2, report, grids, trainer.history,
        extra={"time_mode": trainer.time_mode, "best_valid_loss": state["best_loss"],
               "stop_reason": state["stop_reason"], "steps_trained": state["iter"], "train_time_s": train_time,
               "data_time_s": data_time, "eval_time_s": eval_time,
               "hyper": hyper, "start": start["kind"], "start_valid_loss": start["valid_loss"],
               "start_candidates": start["candidates"], "learned_valid_loss": valid_learned, "returned": returned},
        disc_config={"learner": lcfg.to_dict(), "hyper": hyper, "loss": loss_label, "seed": seed},
        disc_metrics={"best_valid_loss": state["best_loss"]},
        samples=(make_fn, held_out),
    )


# ============================================================================================ registry
def _run_timetuner(cfg: Any, data: LD3Data | None = None, loaded: Any = None, on_step: Any = None) -> Dict[str, Any]:
    from ld3.learners.timetuner_run import run_timetuner

    return run_timetuner(cfg, data=data, loaded=loaded, on_step=on_step)


#: learner name (``learner.name`` in the config) -> run function(cfg, data=None, loaded=None, on_step=None)
LEARNERS: Dict[str, Callable[..., Dict[str, Any]]] = {"ld3": run_ld3, "timetuner": _run_timetuner}


def run_learner(cfg: Any, data: LD3Data | None = None, loaded: Any = None, on_step: Any = None) -> Dict[str, Any]:
    """Run the learner named by ``learner.name`` (``ld3`` or ``timetuner``); what ``main.py`` calls."""
    name = str(((_plain(cfg).get("learner") or {}).get("name")) or "ld3")
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; available learners: {sorted(LEARNERS)}")
    return LEARNERS[name](cfg, data=data, loaded=loaded, on_step=on_step)
