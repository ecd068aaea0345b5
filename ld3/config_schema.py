"""Hydra structured-config schemas built from the dataclasses and signatures that define the defaults.

One source of defaults: the YAML files of ``configs/learner/`` and ``configs/solver/`` start from a schema
registered here (their defaults list names ``/schema/<group>/<name>@_here_``) and hold only what differs.

* ``schema/learner/ld3``: the fields of :class:`ld3.learners.ld3.LD3Config` (plus ``name``, ``log_path``);
* ``schema/learner/timetuner``: the fields of :class:`ld3.learners.timetuner_run.TimeTunerRunConfig`
  (plus ``name``, ``log_path``);
* ``schema/solver/<name>`` for every registered solver: ``name`` and ``options``, the keyword arguments
  of the solver's ``__init__`` that are config values (int, float, bool, str, optionally null) with
  their defaults, and the thresholding options of :class:`ld3.solvers.thresholding.ThresholdingOptions`.

The schemas give Hydra the defaults and the types: an override of the wrong type (``learner.lr_time_1=abc``)
fails while composing (:func:`ld3.cli.check_overrides` turns that into a one-line message naming the key,
the value and the expected type). The nodes are not in struct mode: a key a schema does not know
(``+solver.options.foo=1``, an LD3 key from a learner preset under ``learner=timetuner``) is left to the
validators (:mod:`ld3.config_validation`, ``LD3Config.from_dict``, the solver's own checks), whose messages
name what is allowed.

:func:`register` is idempotent and runs on ``import ld3`` (so that any code composing ``configs/`` with
Hydra's compose API after importing ld3 sees the schemas).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Dict, List, Optional, Tuple

#: ConfigStore group prefix of the schemas (``/schema/learner/ld3``, ``/schema/solver/uni_pc``)
SCHEMA_GROUP = "schema"
#: the learner root used by :mod:`ld3.learners.pipeline` when ``log_path`` is not set
DEFAULT_LOG_PATH = "runs"
_PRIMITIVES = (int, float, bool, str)
_registered = False


def _config_type(annotation: Any) -> Any:
    """``annotation`` if OmegaConf can type-check it as a scalar (optionally ``Optional``), else None."""
    if annotation in _PRIMITIVES:
        return annotation
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        inner = next(a for a in args if a is not type(None))
        if inner in _PRIMITIVES:
            return Optional[inner]
    return None


def _make(name: str, fields: List[Tuple[str, Any, Any]]) -> type:
    """A dataclass that lives in this module (composed configs keep it as their type: pickling finds it here)."""
    cls = dataclasses.make_dataclass(name, fields)
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


def solver_option_fields(cls: type) -> List[Tuple[str, Any, Any]]:
    """``(name, type, default)`` of every config option of solver class ``cls`` (signature order).

    Keyword arguments with a scalar type (or a scalar default) are options; others (a ``torch.Generator``)
    are runtime-only arguments that no config can hold. The thresholding options come last.
    """
    from ld3.solvers.thresholding import ThresholdingOptions

    out: List[Tuple[str, Any, Any]] = []
    for fn in (cls.__init__, ThresholdingOptions.__init__):
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is p.empty:
                continue
            typ = _config_type(hints.get(p.name, Any))
            if typ is None:
                if p.default is None or not isinstance(p.default, _PRIMITIVES):
                    continue  # a runtime object (generator=None): not a config value
                typ = Any
            out.append((p.name, typ, p.default))
    return out


def solver_option_defaults(name: str) -> Dict[str, Any]:
    """The default options of registered solver ``name`` (what ``configs/solver/<name>.yaml`` starts from)."""
    from ld3.solvers.base import _REGISTRY

    return {k: d for k, _, d in solver_option_fields(_REGISTRY[name])}


def solver_schema(name: str) -> type:
    """A dataclass ``{name, options}`` for registered solver ``name``."""
    from ld3.solvers import available
    from ld3.solvers.base import _REGISTRY

    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; available solvers: {available()}")
    cls = _REGISTRY[name]
    opts = _make(f"{cls.__name__}Options",
                 [(k, t, dataclasses.field(default=d)) for k, t, d in solver_option_fields(cls)])
    return _make(f"{cls.__name__}SolverConfig",
                 [("name", str, dataclasses.field(default=name)),
                  ("options", opts, dataclasses.field(default_factory=opts))])


def learner_schema(config_cls: type, name: str) -> type:
    """``config_cls``'s fields preceded by ``name`` (the learner) and ``log_path`` (root of run dirs)."""
    head = [("name", str, dataclasses.field(default=name)),
            ("log_path", str, dataclasses.field(default=DEFAULT_LOG_PATH))]
    hints = typing.get_type_hints(config_cls)
    body = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        default = (dataclasses.field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                   else dataclasses.field(default=f.default))
        body.append((f.name, hints[f.name], default))
    return _make(f"{config_cls.__name__}Schema", head + body)


def schemas() -> Dict[str, type]:
    """``{"learner/ld3": ..., "learner/timetuner": ..., "solver/<name>": ...}`` (ConfigStore paths under schema/)."""
    from ld3.learners.ld3 import LD3Config
    from ld3.learners.timetuner_run import TimeTunerRunConfig
    from ld3.solvers import available

    out: Dict[str, type] = {"learner/ld3": learner_schema(LD3Config, "ld3"),
                            "learner/timetuner": learner_schema(TimeTunerRunConfig, "timetuner")}
    for name in available():
        out[f"solver/{name}"] = solver_schema(name)
    return out


def register() -> None:
    """Store every schema in Hydra's ConfigStore (once per process), struct mode off (module docstring)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for path, schema in schemas().items():
        group, name = path.rsplit("/", 1)
        node = OmegaConf.structured(schema)
        OmegaConf.set_struct(node, False)
        cs.store(group=f"{SCHEMA_GROUP}/{group}", name=name, node=node)
    _registered = True
