"""The teacher-data configuration: parsing, validation, the identity that a data directory is bound to.

A :class:`GenDataConfig` is built from the Hydra config of ``gen_data.py`` (``configs/gen_data.yaml``)
or from any mapping with the same keys (``main.py`` builds one for :func:`ld3.data.ensure_teacher_data`).
Keys fall in two kinds:

* **identity** keys decide what a sample *is* (model, guidance, solver, discretization, steps, dtype,
  conditions, what is stored). A directory is bound to them: a run with different values is refused
  (see :func:`GenDataConfig.identity`).
* **run** keys decide how the work is done (batch size, shard size, device, ``low_gpu``, ``save_png``,
  ``repair``, process split) and may change between runs of the same directory.

The seed list is neither: it may grow (a superset extends the directory) or shrink (a subset is
already there).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

from ld3.utils.plain import json_safe, to_plain  # noqa: F401  (json_safe is re-exported)

DEFAULT_TOTAL_SAMPLES = 100
IMG_SPACES = ("pixel", "latent")
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: keys of a Hydra config that are not generation options (ignored here)
FOREIGN_KEYS = ("paths", "logger", "hydra", "threads")
#: solver options that make a solver stochastic; teacher data must be deterministic per sample
_STOCHASTIC_OPTIONS = ("eta",)

SeedSpec = Union[None, int, str, Sequence[int]]


_to_plain = to_plain  # the shared helper (ld3/utils/plain.py)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_seeds(seeds: SeedSpec, total_samples: int | None = None, seed: int = 0) -> List[int]:
    """Resolve the ``seeds`` option to an explicit list of distinct non-negative seeds.

    * ``None``: ``seed, seed + 1, ..., seed + total_samples - 1``;
    * an int: the start seed, with ``total_samples`` seeds;
    * a string of ranges and numbers, ``"0-99"`` (inclusive) or ``"0-9,20,30-39"``;
    * a list of ints.

    ``total_samples`` defaults to 100 for a start seed; with an explicit range or list it may be
    omitted, and if given it must equal the number of seeds.
    """
    if total_samples is not None and (not _is_int(total_samples) or total_samples < 1):
        raise ValueError(f"total_samples must be a positive integer, got {total_samples!r}")
    if seeds is None or _is_int(seeds):
        start = seed if seeds is None else seeds
        if not _is_int(start) or start < 0:
            raise ValueError(f"the start seed must be a non-negative integer, got {start!r}")
        n = DEFAULT_TOTAL_SAMPLES if total_samples is None else total_samples
        return list(range(start, start + n))
    if isinstance(seeds, str):
        out: List[int] = []
        for part in seeds.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ValueError(
                    f"seeds={seeds!r}: cannot parse {part!r}; use a range like '0-99' (inclusive), "
                    "numbers separated by commas ('1,5,9-12'), a start seed (int) or a list of ints"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ValueError(f"seeds={seeds!r}: range {part!r} is empty (end < start)")
            out.extend(range(lo, hi + 1))
    elif isinstance(seeds, (list, tuple)):
        bad = [s for s in seeds if not _is_int(s) or s < 0]
        if bad:
            raise ValueError(f"seeds must be non-negative integers, got {bad[:5]}")
        out = list(seeds)
    else:
        raise ValueError(
            f"seeds={seeds!r} is not supported; use null, a start seed (int), a range string like '0-99' "
            "or a list of ints"
        )
    if not out:
        raise ValueError("seeds is empty")
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})[:5]
        raise ValueError(f"seeds contains duplicates, e.g. {dup}; each sample needs its own seed")
    if total_samples is not None and total_samples != len(out):
        raise ValueError(
            f"total_samples={total_samples} disagrees with seeds={seeds!r} ({len(out)} seeds); "
            "give only one of them or make them agree"
        )
    return out


def _group(value: Any, key: str, required: Sequence[str]) -> Dict[str, Any]:
    value = _to_plain(value)
    if isinstance(value, str):  # a bare name: {name: value, options: {}}
        value = {required[0]: value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping with keys {list(required)}, got {value!r}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{key} config is missing {missing}; got keys {sorted(value)}")
    out = dict(value)
    out["options"] = dict(_to_plain(out.get("options") or {}))
    return out


@dataclass
class GenDataConfig:
    """All options of the teacher-data generator (see ``docs/data.md``)."""

    model: Dict[str, Any]
    solver: Dict[str, Any]
    discretization: Dict[str, Any]
    steps: int = 20
    seed: int = 0
    seeds: SeedSpec = None
    total_samples: int | None = None
    sampling_batch_size: int = 50
    shard_size: int = 128
    save_pt: bool = True
    save_png: bool = False
    data_dir: str = "data"
    out_dir: str | None = None
    img_space: str = "pixel"
    dtype: str = "float32"
    labels: Any = None
    num_prompts: int | None = None
    prompt_path: str | None = None
    low_gpu: bool = False
    low_gpu_chunk: int = 1
    batch_invariant: Any = "auto"
    invariant_block: int = 16
    device: str = "auto"
    repair: bool = False
    process_index: int = 0
    process_count: int = 1
    progress: bool = True
    #: the full config as given (resolved), recorded in the manifest
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, cfg: Any, **overrides: Any) -> GenDataConfig:
        """Build from a Hydra ``DictConfig`` or a plain mapping; unknown keys raise ``ValueError``."""
        raw = dict(_to_plain(cfg) or {})
        raw.update({k: _to_plain(v) for k, v in overrides.items()})
        known = {f for f in cls.__dataclass_fields__ if f != "raw"}
        unknown = sorted(k for k in raw if k not in known and k not in FOREIGN_KEYS)
        if unknown:
            raise ValueError(f"unknown teacher-data options {unknown}; allowed: {sorted(known)}")
        kwargs = {k: raw[k] for k in known if k in raw}
        for k in ("model", "solver", "discretization"):
            if k not in kwargs:
                raise ValueError(f"teacher-data config needs a {k!r} group")
        out = cls(**kwargs, raw=raw)
        out.validate()
        return out

    def validate(self) -> None:
        """Check every option once, early, with messages naming the bad value and what is allowed."""
        self.model = _group(self.model, "model", ["name"])
        self.solver = _group(self.solver, "solver", ["name"])
        self.discretization = _group(self.discretization, "discretization", ["kind"])
        for key in ("steps", "sampling_batch_size", "shard_size", "low_gpu_chunk", "invariant_block", "process_count"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        if not _is_int(self.process_index) or not (0 <= self.process_index < self.process_count):
            raise ValueError(
                f"process_index must be an integer in [0, process_count={self.process_count}), "
                f"got {self.process_index!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.seed_list()  # validates seeds / total_samples
        if self.img_space not in IMG_SPACES:
            raise ValueError(f"img_space={self.img_space!r} is not supported; allowed: {list(IMG_SPACES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not supported; allowed: {list(DTYPES)}")
        for key in ("save_pt", "save_png", "low_gpu", "repair", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not self.save_pt and not self.save_png:
            raise ValueError("save_pt=false and save_png=false would store nothing; enable at least one")
        if self.batch_invariant not in ("auto", True, False):
            raise ValueError(f"batch_invariant must be auto, true or false, got {self.batch_invariant!r}")
        if self.num_prompts is not None and (not _is_int(self.num_prompts) or self.num_prompts < 1):
            raise ValueError(f"num_prompts must be a positive integer or null, got {self.num_prompts!r}")
        if self.num_prompts is not None and self.prompt_path is None:
            raise ValueError("num_prompts needs prompt_path (a COCO captions JSON or a text file, one prompt a line)")
        if self.prompt_path is not None and self.labels is not None:
            raise ValueError("give either labels (class-conditional models) or prompt_path (text models), not both")
        self.labels = _to_plain(self.labels)
        lab = self.labels
        ok = (
            lab is None
            or lab == "uniform"
            or (_is_int(lab) and lab >= 0)
            or (isinstance(lab, list) and lab and all(_is_int(v) and v >= 0 for v in lab))
        )
        if not ok:
            raise ValueError(
                f"labels={lab!r} is not supported; allowed: null (automatic), 'uniform' (random per seed), "
                "a class index, or a list of class indices (cycled over samples)"
            )
        for k, v in self.solver["options"].items():
            if k in _STOCHASTIC_OPTIONS and v not in (0, 0.0, None):
                raise ValueError(
                    f"solver option {k}={v!r} makes the teacher stochastic; teacher data needs a deterministic "
                    f"solver so that every sample depends on its seed only (set {k}=0)"
                )
        gs = self.model.get("guidance_scale", None)
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, (int, float)) or not math.isfinite(gs)):
            raise ValueError(f"model.guidance_scale must be a finite number, got {gs!r}")

    # ------------------------------------------------------------------ derived values
    def seed_list(self) -> List[int]:
        return parse_seeds(self.seeds, self.total_samples, self.seed)

    def output_dir(self) -> Path:
        """``out_dir`` if given, else ``{data_dir}/{solver}_NFE{steps}_{discretization}_seed{first seed}``."""
        if self.out_dir:
            return Path(self.out_dir)
        name = f"{self.solver['name']}_NFE{self.steps}_{self.discretization['kind']}_seed{self.seed_list()[0]}"
        return Path(self.data_dir) / name

    def identity(self) -> Dict[str, Any]:
        """What a sample depends on, normalised (:mod:`ld3.data.identity`); a directory is bound to these values."""
        from ld3.data.identity import normalise_identity

        m = self.model
        return json_safe(normalise_identity({
            "model": {
                "name": m["name"],
                "options": m["options"],
                "guidance_type": m.get("guidance_type"),
                "guidance_scale": m.get("guidance_scale"),
            },
            "solver": {"name": self.solver["name"], "options": self.solver["options"]},
            "discretization": {"kind": self.discretization["kind"], "options": self.discretization["options"]},
            "steps": self.steps,
            "img_space": self.img_space,
            "dtype": self.dtype,
            "labels": self.labels,
            "prompt_path": None if self.prompt_path is None else str(self.prompt_path),
            "num_prompts": self.num_prompts,
            "save_pt": self.save_pt,
        }))

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("raw")
        return d


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": value}`` (lists stay values)."""
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def diff_identity(existing: Mapping[str, Any], requested: Mapping[str, Any]) -> List[str]:
    """Human-readable differences ``key: existing -> requested`` between two identities (both normalised)."""
    from ld3.data.identity import normalise_identity

    a, b = flatten(json_safe(normalise_identity(existing))), flatten(json_safe(normalise_identity(requested)))
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            lines.append(f"{key}: {va!r} (existing) != {vb!r} (requested)")
    return lines
