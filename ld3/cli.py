"""What every entry point shares: thread defaults, config checks before any work, one-line errors.

``main.py``, ``gen_data.py`` and ``eval_fid.py`` are written as::

    @entry_point("config", "main")
    def main(cfg): ...

:func:`entry_point` wraps Hydra's ``@hydra.main``:

1. **Before Hydra runs** (single runs, not ``-m``): the command-line overrides are checked against the
   config tree (an unknown key or group option gets a "did you mean" hint: ``stepz=4`` -> ``steps``,
   ``guidance_scale=-1`` -> ``model.guidance_scale``), the config is composed (a value of the wrong type
   for a key typed by a structured config, :mod:`ld3.config_schema`, is named with the expected type) and
   every value is validated (:func:`ld3.config_validation.validate_config`). Nothing has been written then.
2. **Threads**: ``threads: auto`` (every entry config) sets torch's intra-op threads with
   :func:`auto_threads`; an integer sets them explicitly. Measured in ``docs/benchmarks.md``.
3. **Errors a user can fix** (bad values, missing files, inconsistent data, a missing optional extra)
   print one line, ``error: <message>``, and exit with status 2 (config) or 1 (runtime); the traceback
   is printed only with ``LD3_DEBUG=1``. Ctrl-C exits 130 with a hint that a rerun resumes.

Hydra itself is configured (``hydra:`` in each entry config) to write nothing: no ``outputs/``
directory, log lines on stdout only.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEBUG_ENV = "LD3_DEBUG"
#: command-line flags for which no check is made (Hydra prints help / config / completion)
_PASSTHROUGH_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                      "--resolve", "--version", "--package", "-p")
_MULTIRUN_FLAGS = ("-m", "--multirun")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ============================================================================================ threads
def available_cpus() -> int:
    """CPUs this process may run on (affinity mask / cgroup-limited where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def auto_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Intra-op threads for ``threads: auto``: half the CPUs, fewer if they are busy, at least 1.

    ``min(cpus // 2, round(cpus - load))`` (1-minute load average), at least 1. Half the logical CPUs
    is the physical core count of SMT machines (torch's own default); subtracting the load avoids the
    6-8x slow-down of OpenMP threads competing for cores with other busy processes. On a 2-core machine
    this is 1 thread, which was faster than 2 even when the machine was idle (docs/benchmarks.md).
    An ``OMP_NUM_THREADS`` set by the user wins.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    cpus = available_cpus() if cpus is None else int(cpus)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover
            load = 0.0
    return max(1, min(cpus // 2, int(round(cpus - load))))


def apply_threads(setting: Any = "auto") -> int:
    """Set torch's intra-op threads (and the BLAS/OpenMP variables of child processes); returns the count."""
    import torch

    n = auto_threads() if setting in (None, "auto") else int(setting)
    torch.set_num_threads(n)
    for var in _THREAD_ENV:
        os.environ.setdefault(var, str(n))
    return n


def threads_arg(value: str) -> Any:
    """argparse ``type`` for a ``--threads`` option of the scripts: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"--threads={value!r}: expected auto or an integer >= 1")
    return int(value)


# ============================================================================================ errors
def user_error_types() -> tuple:
    """Exceptions whose message is enough for a user to fix the problem."""
    from ld3.data.store import TeacherDataError
    from ld3.utils.extras import MissingExtraError

    return (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, TeacherDataError, MissingExtraError)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def report_error(exc: BaseException, prog: str, code: int) -> None:
    """Print ``prog: error: message`` on one line (the traceback too under LD3_DEBUG=1) and exit."""
    if _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    msg = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(code)


# ============================================================================================ overrides
def _search_dirs(overrides: Sequence[str]) -> List[Path]:
    """The package's config dir plus the ``file://`` dirs of a ``hydra.searchpath=[...]`` override."""
    dirs = [CONFIG_DIR]
    for o in overrides:
        if o.startswith("hydra.searchpath="):
            for item in o.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item[len("file://"):]))
    return dirs


def _configs_in(group: str, dirs: Sequence[Path] = (CONFIG_DIR,)) -> List[str]:
    return sorted({p.stem for d in dirs if (d / group).is_dir() for p in (d / group).glob("*.yaml")})


def _flat_keys(d: Any, prefix: str = "") -> List[str]:
    out: List[str] = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.append(key)
            out.extend(_flat_keys(v, key))
    return out


def _has_key(d: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def _suggest_key(key: str, keys: Sequence[str]) -> str:
    leaf = key.split(".")[-1]
    parent = key.rsplit(".", 1)[0] if "." in key else None
    if parent is not None and parent in keys:  # a known group or section: name its children
        n = len(parent) + 1
        children = [k[n:] for k in keys if k.startswith(parent + ".") and "." not in k[n:]]
        close = difflib.get_close_matches(leaf, children, n=1, cutoff=0.6)
        if close:
            return f"; did you mean {parent + '.' + close[0]!r}?"
        return f"; {parent} has {', '.join(children) or 'no keys yet'} (to add a key: +{key}=VALUE)"
    by_leaf = [k for k in keys if k.split(".")[-1] == leaf and k != key]
    if by_leaf:
        return f"; did you mean {by_leaf[0]!r}?"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a misspelt leaf under a right parent: model.guidanse_scale
        close = difflib.get_close_matches(leaf, [k.split(".")[-1] for k in keys], n=1, cutoff=0.7)
        close = [k for k in keys if close and k.split(".")[-1] == close[0]][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def check_overrides(config_name: str, overrides: Sequence[str], prog: str) -> Dict[str, Any]:
    """Compose ``config_name`` with ``overrides`` after checking every key and group option; return it (plain)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from ld3.config_validation import ConfigError, did_you_mean

    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    search = [o for o in overrides if o.startswith("hydra.searchpath=")]
    dirs = _search_dirs(search)
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except Exception as e:  # hydra's OverrideParseException
        raise ConfigError(f"cannot parse the overrides {list(user)}: {' '.join(str(e).split())}") from None
    groups, values = [], []
    for o in parsed:
        key = o.key_or_group
        (groups if any((d / key).is_dir() for d in dirs) else values).append(o)
    for o in groups:
        if o.is_delete() or o.value() is None:
            continue
        if o.is_sweep_override():
            raise ConfigError(f"{o.input_line}: a list of options is a sweep; add -m (python {prog} -m ...)")
        choice = str(o.value())
        options = _configs_in(o.key_or_group, dirs)
        if choice not in options:
            raise ConfigError(f"{o.key_or_group}={choice!r} is not a configured {o.key_or_group}"
                              f"{did_you_mean(choice, options)} (allowed: {', '.join(options)})")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=prog):
        group_overrides = search + [o.input_line for o in groups]
        try:
            base = OmegaConf.to_container(compose(config_name, overrides=group_overrides), resolve=False)
        except Exception as e:  # a group this entry point does not use (gen_data.py learner=ld3)
            import re

            m = re.search(r"Could not override '([^']+)'", str(e))
            if m:
                raise ConfigError(f"{m.group(1)!r} is not an option of {prog} (see {prog} --help)") from None
            raise ConfigError(" ".join(str(e).split())) from None
        keys = _flat_keys(base)
        for o in values:
            if o.is_add() or o.is_force_add():
                continue
            if not _has_key(base, o.key_or_group):
                raise ConfigError(f"{o.key_or_group!r} is not an option of {prog}{_suggest_key(o.key_or_group, keys)}"
                                  f" (see {prog} --help)")
        try:
            cfg = compose(config_name, overrides=search + list(user))
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception as e:
            raise ConfigError(_type_error(e, values) or " ".join(str(e).split())) from None


#: how an OmegaConf type-conversion message names the type, -> what our messages say is expected
_EXPECTED = (("to Integer", "an integer"), ("to Float", "a number"), ("valid bool", "true or false"),
             ("to String", "a string"), ("ListConfig", "a list"), ("DictConfig", "a mapping"))


def _type_error(exc: BaseException, values: Sequence[Any]) -> str | None:
    """A structured-config type error (``learner.lr_time_1=abc``) as ``key='abc' is not valid: expected ...``.

    The schemas (:mod:`ld3.config_schema`) type the learner and solver keys; Hydra reports a bad value as
    "Error merging override ..." caused by an OmegaConf ``ValidationError``. None for any other error.
    """
    from omegaconf.errors import ValidationError

    cause = exc.__cause__
    if not isinstance(cause, ValidationError):
        return None
    key = getattr(cause, "full_key", None)
    match = [o for o in values if o.key_or_group == key] or [
        o for o in values if f"override {o.input_line}" in str(exc)]
    if not match:
        return None
    o = match[-1]
    what = next((w for k, w in _EXPECTED if k in str(cause)), None)
    allowed = f"expected {what}" if what else " ".join(str(cause).split("full_key")[0].split())
    return f"{o.key_or_group}={o.value()!r} is not valid: {allowed}"


# ============================================================================================ entry point
def entry_point(config_name: str, entry: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """Decorator for an entry point's task function (see the module docstring)."""
    import hydra

    from ld3.config_validation import ConfigError, validate_config

    prog = f"{entry}.py"

    def deco(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: Any) -> Any:
            try:
                plain = validate_config(cfg, entry)  # again: -m jobs and programmatic calls skip the pre-check
            except ConfigError as e:
                report_error(e, prog, 2)
            if plain.get("steps") != cfg.get("steps"):  # filled in (eval_fid: the NFE of a learned file)
                cfg.steps = plain["steps"]
            if plain["discretization"].get("kind") == "learned":  # a wildcard path, expanded
                cfg.discretization.options.path = plain["discretization"]["options"]["path"]
            apply_threads(cfg.get("threads", "auto"))
            try:
                return fn(cfg)
            except KeyboardInterrupt:
                print(f"\n{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
                sys.exit(130)
            except user_error_types() as e:
                report_error(e, prog, 1)

        hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)

        @functools.wraps(fn)
        def run() -> Any:
            argv = sys.argv[1:]
            if not any(a in _PASSTHROUGH_FLAGS or a in _MULTIRUN_FLAGS for a in argv):
                try:
                    validate_config(check_overrides(config_name, [a for a in argv if not a.startswith("-")], prog),
                                    entry)
                except (ConfigError, *user_error_types()) as e:
                    report_error(e, prog, 2)
            return hydra_main()

        return run

    return deco
