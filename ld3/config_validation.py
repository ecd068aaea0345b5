"""Validate a composed entry-point config before anything is loaded, generated or written.

:func:`validate_config` checks every value a user can set on the command line of ``main.py``,
``gen_data.py`` and ``eval_fid.py`` (types, ranges, allowed names) and raises :class:`ConfigError`
with a one-line message that names the key, the bad value and what is allowed. The checks reuse the
objects that define the options (the solver registry, the discretization registry, ``LD3Config``,
``GenDataConfig``) so that a value accepted here is accepted later.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping

ENTRY_POINTS = ("main", "gen_data", "eval_fid")
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A configuration value the user can fix; the message is one line."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    choices = [str(c) for c in choices]
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.5)
    return f"; did you mean {lower[close[0]]!r}?" if close else ""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not valid: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(key: str, v: Any, lo: int = 1) -> int:
    if not _is_int(v) or v < lo:
        _fail(key, v, f"expected an integer >= {lo}")
    return v


def check_number(key: str, v: Any, lo: float | None = None) -> float:
    if not _is_number(v) or (lo is not None and v < lo):
        _fail(key, v, "expected a finite number" + (f" >= {lo}" if lo is not None else ""))
    return float(v)


def check_bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        _fail(key, v, "expected true or false")
    return v


def check_choice(key: str, v: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if v not in choices:
        raise ConfigError(f"{key}={v!r} is not valid{did_you_mean(v, choices)} (allowed: {', '.join(choices)})")
    return v


def check_threads(v: Any) -> None:
    if v != "auto" and (not _is_int(v) or v < 1):
        _fail("threads", v, "expected auto or an integer >= 1")


def check_device(v: Any) -> None:
    if not isinstance(v, str) or not _DEVICE_RE.match(v):
        _fail("device", v, "expected auto, cpu, cuda, cuda:N or mps")


def check_model(m: Mapping[str, Any]) -> None:
    from ld3.models.zoo import available_models

    check_choice("model", m.get("name"), available_models())
    gt = m.get("guidance_type")
    if gt is not None:
        check_choice("model.guidance_type", gt, GUIDANCE_TYPES)
    gs = m.get("guidance_scale")
    if gs is not None:
        check_number("model.guidance_scale", gs, lo=0.0)


def check_solver(key: str, name: Any, options: Mapping[str, Any] | None, steps: int | None = None) -> None:
    """The solver exists, its options are accepted, and ``steps`` is a valid NFE for it."""
    from ld3.schedules import NoiseScheduleVP
    from ld3.solvers import available, get_solver

    check_choice(key, name, available())
    try:
        solver = get_solver(name, NoiseScheduleVP(schedule="linear"), **dict(options or {}))
        if steps is not None:
            solver.num_timesteps(steps)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}={name}: {_one_line(e)}") from None


def check_discretization(key: str, kind: Any, options: Mapping[str, Any] | None) -> None:
    from ld3.discretizations import available
    from ld3.discretizations.base import allowed_options, lookup

    check_choice(key, kind, available())
    allowed = allowed_options(lookup(kind))
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{key}={kind}: unknown option {unknown[0]!r}{did_you_mean(unknown[0], allowed)} (allowed: {allowed})"
        )
    if kind == "learned":
        path = (options or {}).get("path")
        if path in (None, "???") or not Path(str(path)).is_file():
            raise ConfigError(
                f"discretization.options.path={path!r}: no such file; give the discretization.json of a main.py "
                "run (e.g. runs/digits/<run>/discretization.json)"
            )


def check_learner(lraw: Mapping[str, Any]) -> None:
    """Types of every LD3Config field, then LD3Config's own checks."""
    from ld3.learners.ld3 import LD3Config

    lraw = {k: v for k, v in lraw.items() if k not in ("name", "log_path")}
    fields = {f.name: f for f in dataclasses.fields(LD3Config)}
    for k, v in lraw.items():
        if k not in fields:
            raise ConfigError(f"learner.{k} is not an LD3 option{did_you_mean(k, fields)}")
        typ = str(fields[k].type)
        if v is None and "None" in typ:
            continue
        if typ.startswith("int") and not _is_int(v):
            _fail(f"learner.{k}", v, "expected an integer")
        if typ.startswith("float") and not _is_number(v):
            _fail(f"learner.{k}", v, "expected a number")
        if typ == "bool" and not isinstance(v, bool):
            _fail(f"learner.{k}", v, "expected true or false")
    try:
        LD3Config.from_dict(dict(lraw))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"learner: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def validate_config(cfg: Any, entry: str) -> Dict[str, Any]:
    """Check a composed config of entry point ``entry`` (main | gen_data | eval_fid); returns it as plain dict."""
    from ld3.data.config import _to_plain

    if entry not in ENTRY_POINTS:
        raise ValueError(f"entry={entry!r}; allowed: {ENTRY_POINTS}")
    c: Dict[str, Any] = dict(_to_plain(cfg))
    c.pop("hydra", None)
    check_threads(c.get("threads", "auto"))
    check_device(c.get("device", "auto"))
    check_int("seed", c.get("seed", 0), lo=0)
    disc = c["discretization"]
    if disc.get("kind") == "learned":
        disc["options"]["path"] = expand_path_pattern(disc.get("options", {}).get("path"))
    check_discretization("discretization", disc.get("kind"), disc.get("options"))
    if entry == "eval_fid":
        c["steps"] = resolve_eval_steps(c)
    steps = check_int("steps", c.get("steps"))
    check_model(c["model"])
    solver = c["solver"]
    stray = sorted(set(solver) - {"name", "options"})
    if stray:  # e.g. solver.order=3: a solver's options live under solver.options
        raise ConfigError(f"solver.{stray[0]}={solver[stray[0]]!r} is not a solver key: the solver config holds "
                          f"name and options; solver options go under solver.options (solver.options.{stray[0]}=...)")
    check_solver("solver", solver.get("name"), solver.get("options"), steps)
    check_extras(c)
    if entry == "main":
        _validate_main(c, steps)
    elif entry == "gen_data":
        _validate_gen_data(c)
    else:
        check_int("num_samples", c.get("num_samples"), lo=2)
        check_int("batch_size", c.get("batch_size"))
        for k in ("save_grid", "progress"):
            check_bool(k, c.get(k, True))
        _validate_eval_metrics(c)
    return c


def _validate_eval_metrics(c: Mapping[str, Any]) -> None:
    """eval_fid.py's ``metrics`` / ``is_splits`` (names, ranges) and the extras they need, before any work."""
    from ld3.metrics.evaluate import parse_metrics
    from ld3.metrics.inception_score import check_splits

    try:
        names = parse_metrics(c.get("metrics"))
        if "is" in names:
            check_splits(c.get("num_samples"), c.get("is_splits", 10))
    except ValueError as e:
        raise ConfigError(_one_line(e)) from None
    if "clip" in names:
        from ld3.utils.extras import require

        require("transformers", "zoo", "the CLIP score (metrics=[..., clip])")


def expand_path_pattern(path: Any) -> Any:
    """A path with ``*``/``?`` wildcards -> the one existing file it matches (none or several: ConfigError)."""
    if path in (None, "???"):
        raise ConfigError("discretization=learned needs discretization.options.path=<a discretization.json of a "
                          "main.py run> (a wildcard matching one file is fine: 'runs/digits/uni_pc-N6-*/"
                          "discretization.json')")
    if not isinstance(path, str) or not any(ch in path for ch in "*?["):
        return path
    import glob

    hits = sorted(glob.glob(path))
    if len(hits) != 1:
        found = f"matches {len(hits)} files: {hits[:4]}" if hits else "matches no file"
        raise ConfigError(f"discretization.options.path={path!r} {found}; give exactly one discretization.json")
    return hits[0]


#: zoo loaders that need the ``zoo`` extra (diffusers, transformers)
ZOO_EXTRA_MODELS = ("stable_diffusion", "diffusers_unet")


def check_extras(c: Mapping[str, Any]) -> None:
    """Optional packages the config needs are installed (else MissingExtraError naming the extra), before any work."""
    from ld3.utils.extras import require

    if c["model"].get("name") in ZOO_EXTRA_MODELS:
        for mod in ("diffusers", "transformers"):
            require(mod, "zoo", f"model={c['model']['name']}")
    loss = c.get("loss") or {}
    if str(loss.get("name", "")).startswith("lpips"):
        require("lpips", "fid", "the LPIPS loss")
    if (c.get("fid") or {}).get("feature") == "inception":
        require("torchmetrics", "fid", "Inception features (fid=inception)")
    logger = c.get("logger") or {}
    if logger.get("backend") == "wandb" and (logger.get("wandb") or {}).get("mode", "disabled") != "disabled":
        require("wandb", "wandb", "logger=wandb")


#: eval_fid.py's NFE when ``steps`` is null and the discretization is not a learned file
DEFAULT_EVAL_STEPS = 10


def resolve_eval_steps(c: Mapping[str, Any]) -> Any:
    """eval_fid.py's ``steps``: a learned file's NFE when null (a different explicit value is an error)."""
    steps = c.get("steps")
    disc = c["discretization"]
    if disc.get("kind") != "learned":
        return DEFAULT_EVAL_STEPS if steps is None else steps
    from ld3.discretizations import load

    path = disc["options"]["path"]
    try:
        nfe = load(path).nfe
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(f"discretization.options.path={path!r}: cannot read it ({_one_line(e)})") from None
    if steps is not None and nfe is not None and steps != nfe:
        raise ConfigError(f"steps={steps!r} but {path} holds a grid for NFE {nfe}; leave steps out (the NFE comes "
                          "from the file)")
    return nfe if steps is None else steps


def _validate_main(c: Dict[str, Any], steps: int) -> None:
    from ld3.data.generate import teacher_config_from_main

    lraw = dict(c.get("learner") or {})
    if lraw.get("name", "ld3") == "ld3":  # other learners validate their own options
        check_learner(lraw)
    loss = c.get("loss")
    if loss is not None:
        from ld3.learners.losses import available_losses

        check_choice("loss", loss.get("name"), available_losses())
    t = dict(c.get("teacher") or {})
    check_int("teacher.steps", t.get("steps"))
    check_int("teacher.seed", t.get("seed", 0), lo=0)
    check_int("teacher.sampling_batch_size", t.get("sampling_batch_size", 1))
    ts = t.get("solver")
    if isinstance(ts, Mapping):
        check_solver("teacher.solver.name", ts.get("name"), ts.get("options"), t.get("steps"))
    elif isinstance(ts, str):  # the older flat layout
        check_solver("teacher.solver", ts, t.get("solver_options"), t.get("steps"))
    td = t.get("discretization")
    if isinstance(td, Mapping):
        check_discretization("teacher.discretization.kind", td.get("kind"), td.get("options"))
    _gen_data_config(teacher_config_from_main(c), prefix="teacher.")
    check_bool("progress", c.get("progress", True))


def _validate_gen_data(c: Dict[str, Any]) -> None:
    _gen_data_config({k: v for k, v in c.items() if k != "threads"}, prefix="")


def _gen_data_config(mapping: Dict[str, Any], prefix: str) -> None:
    from ld3.data.config import GenDataConfig

    try:
        GenDataConfig.from_mapping({k: v for k, v in mapping.items() if k != "threads"})
    except (ValueError, TypeError) as e:
        msg = _one_line(e)
        raise ConfigError(f"{prefix}{msg}" if prefix and not msg.startswith(prefix) else msg) from None
