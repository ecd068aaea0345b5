"""Sharded, resumable accumulation of feature sums: the engine behind ``eval_fid.py`` at scale.

The work is cut into global batches ``0 .. num_batches-1`` (batch b always holds the same images,
whatever the number of processes). Processes share the batches that are not finished yet
round-robin, accumulate float64 sums (count, sum, sum of outer products) per finished batch and, when
a checkpoint directory is given, write their sums after every batch to
``{dir}/shard-rank{r}-of{K}.pt`` (atomic: temp file + rename). A rerun reads every shard file (of
any earlier process count), computes only the batches none of them holds, and a finished run computes
nothing. At the end the sums of all processes are added with ``all_reduce`` (float64), so the score
equals the one-process score up to the order of float64 additions (~1e-12 relative).

A ``run.json`` with a fingerprint of everything that determines the images and features (model,
solver, time grid, seeds, batch size, feature extractor) guards the directory: a checkpoint of another
configuration is refused instead of being mixed in. Resuming in a multi-node job needs the directory
on a shared file system.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Set, Tuple

import torch
from tqdm import tqdm

from ld3.metrics.distributed import DistContext
from ld3.metrics.fid import FeatureStats
from ld3.utils.io import atomic_torch_save, atomic_write_json

SHARD_FORMAT = "ld3.fid-shard/1"
_SHARD_RE = re.compile(r"^shard-rank(\d+)-of(\d+)\.pt$")


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (what identifies a run's images and features)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class BatchMetric(Protocol):
    """A metric accumulated next to the feature sums (Inception Score, CLIP score): float64 tensors that add
    over batches, processes and resumed runs (so sharding and resuming stay exact)."""

    def zeros(self) -> Dict[str, torch.Tensor]:
        """The empty sums (fixed shapes: every process reduces them, also one that computed no batch)."""

    def batch(self, b: int, images: torch.Tensor, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The sums of global batch ``b`` (``outputs``: the feature extractor's ``features`` / ``logits``)."""


Sums = Dict[str, Dict[str, torch.Tensor]]


def _zero_sums(metrics: Dict[str, BatchMetric]) -> Sums:
    return {name: {k: v.double().clone() for k, v in m.zeros().items()} for name, m in metrics.items()}


def _add_sums(into: Sums, other: Sums) -> Sums:
    for name, sums in into.items():
        if name not in other:
            raise ValueError(f"metric sums {name!r} missing (stored: {sorted(other)})")
        for key, value in sums.items():
            add = other[name][key].double()
            if add.shape != value.shape:
                raise ValueError(f"metric sums {name}.{key}: shape {tuple(add.shape)}, expected {tuple(value.shape)}")
            value += add
    return into


def _outputs(feature_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
             with_outputs: bool) -> Dict[str, torch.Tensor]:
    if with_outputs and hasattr(feature_fn, "outputs"):
        return feature_fn.outputs(images)
    return {"features": feature_fn(images)}


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-rank{rank}-of{world_size}.pt"


@dataclass
class Accumulated:
    """Reduced statistics over every finished batch (all processes, earlier runs included)."""

    stats: FeatureStats
    num_batches: int
    done_batches: int        # finished batches after this run (all processes)
    computed_batches: int    # batches computed by this run (all processes)
    metrics: Optional[Sums] = None  # reduced sums of the extra metrics (``metrics=`` of accumulate_features)

    @property
    def complete(self) -> bool:
        return self.done_batches == self.num_batches


def _check_run_file(directory: Path, fp: str, description: Dict[str, Any], ctx: DistContext) -> None:
    run_file = directory / "run.json"
    if run_file.is_file():
        stored = json.loads(run_file.read_text(encoding="utf-8"))
        if stored.get("fingerprint") != fp:
            raise ValueError(
                f"checkpoint directory {str(directory)!r} belongs to another configuration (fingerprint "
                f"{stored.get('fingerprint')!r}, this run {fp!r}); use another out_dir or delete it"
            )
    ctx.barrier()
    if ctx.is_main and not run_file.is_file():
        atomic_write_json(run_file, {"format": SHARD_FORMAT, "fingerprint": fp, "run": description})


def _load_shards(directory: Path, fp: str) -> Dict[str, Tuple[Set[int], FeatureStats, Sums]]:
    out: Dict[str, Tuple[Set[int], FeatureStats, Sums]] = {}
    seen: Dict[int, str] = {}
    for path in sorted(directory.glob("shard-rank*-of*.pt")):
        if not _SHARD_RE.match(path.name):
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != SHARD_FORMAT or state.get("fingerprint") != fp:
            raise ValueError(f"{path} is not a shard of this run (format / fingerprint differ); delete it or "
                             f"use another out_dir")
        batches = {int(b) for b in state["batches"]}
        for b in batches:
            if b in seen:
                raise ValueError(f"batch {b} is stored twice ({seen[b]} and {path.name}); the directory is corrupt")
            seen[b] = path.name
        out[path.name] = (batches, FeatureStats.from_state(state), state.get("metrics") or {})
    return out


def _reduce(local: FeatureStats, ctx: DistContext) -> FeatureStats:
    dim = ctx.all_reduce_max(local.dim)
    if dim == 0:
        return FeatureStats()
    st = local.state()
    s = st["sum"] if st["sum"] is not None else torch.zeros(dim, dtype=torch.float64)
    o = st["outer"] if st["outer"] is not None else torch.zeros(dim, dim, dtype=torch.float64)
    n = ctx.all_reduce_sum(torch.tensor([float(local.n)], dtype=torch.float64))
    s = ctx.all_reduce_sum(s.double())
    o = ctx.all_reduce_sum(o.double())
    return FeatureStats.from_sums(int(round(float(n.item()))), s, o)


def accumulate_features(
    num_batches: int,
    produce: Callable[[int], torch.Tensor],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    ctx: Optional[DistContext] = None,
    checkpoint_dir: Optional[Path] = None,
    run_fingerprint: str = "",
    run_description: Optional[Dict[str, Any]] = None,
    on_batch: Optional[Callable[[int, torch.Tensor], None]] = None,
    max_batches: Optional[int] = None,
    batch_size_hint: Optional[int] = None,
    progress: bool = True,
    desc: str = "features",
    metrics: Optional[Dict[str, BatchMetric]] = None,
) -> Accumulated:
    """Feature sums over ``produce(b)`` for every batch b, sharded over processes, resumable.

    Args:
        num_batches: number of global batches.
        produce: ``b -> images`` (B, C, H, W) in [-1, 1]; must be a pure function of b.
        feature_fn: images -> (B, F) features.
        ctx: the process group (:func:`ld3.metrics.distributed.init_distributed`); None: one process.
        checkpoint_dir: where per-process shards live; None: no checkpoints, no resume.
        run_fingerprint / run_description: identify the configuration (see :func:`fingerprint`).
        on_batch: called with (b, images) after the features and before the checkpoint (PNG export).
        max_batches: compute at most this many new batches per process, then stop (a time-sliced job;
            the result is then incomplete and a rerun continues).
        metrics: extra additive metrics (:class:`BatchMetric`) accumulated, checkpointed and reduced with the
            feature sums; they should be part of ``run_fingerprint`` (a directory without them is refused).
    """
    ctx = ctx or DistContext()
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or null, got {max_batches}")
    own = FeatureStats()
    own_batches: Set[int] = set()
    foreign = FeatureStats()
    done: Set[int] = set()
    own_path = None
    metrics = dict(metrics or {})
    own_m, foreign_m = _zero_sums(metrics), _zero_sums(metrics)
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _check_run_file(checkpoint_dir, run_fingerprint, run_description or {}, ctx)
        shards = _load_shards(checkpoint_dir, run_fingerprint)
        current = {shard_name(r, ctx.world_size) for r in range(ctx.world_size)}
        own_path = checkpoint_dir / shard_name(ctx.rank, ctx.world_size)
        for name, (batches, stats, sums) in shards.items():
            bad = [b for b in batches if not 0 <= b < num_batches]
            if bad:
                raise ValueError(f"{name} holds batch {bad[0]}, outside 0..{num_batches - 1}; wrong directory?")
            done |= batches
            if name == own_path.name:
                own, own_batches = stats, set(batches)
                _add_sums(own_m, sums)
            elif name not in current and ctx.is_main:
                foreign.add(stats)  # shards of an earlier run with another process count: rank 0 carries them
                _add_sums(foreign_m, sums)
        ctx.barrier()  # nobody writes before everybody has read the state
    remaining = [b for b in range(num_batches) if b not in done]
    mine: List[int] = remaining[ctx.rank :: ctx.world_size]
    if max_batches is not None:
        mine = mine[:max_batches]
    total = len(mine) * (batch_size_hint or 1)
    unit = "img" if batch_size_hint else "batch"
    bar = tqdm(total=total, desc=desc, disable=not (progress and ctx.is_main), unit=unit)
    for b in mine:
        images = produce(b)
        outputs = _outputs(feature_fn, images, bool(metrics))
        batch_stats = FeatureStats()
        batch_stats.update(outputs["features"])
        batch_m = {name: m.batch(b, images, outputs) for name, m in metrics.items()}
        if on_batch is not None:
            on_batch(b, images)
        own.add(batch_stats)
        _add_sums(own_m, batch_m)
        own_batches.add(b)
        if own_path is not None:
            state = {"format": SHARD_FORMAT, "fingerprint": run_fingerprint, "batches": sorted(own_batches),
                     **own.state()}
            if metrics:
                state["metrics"] = own_m
            atomic_torch_save(state, own_path)
        bar.update(images.shape[0] if batch_size_hint else 1)
    bar.close()
    computed = int(round(float(ctx.all_reduce_sum(torch.tensor([float(len(mine))], dtype=torch.float64)).item())))
    local = FeatureStats().add(own).add(foreign)
    stats = _reduce(local, ctx)
    reduced = None
    if metrics:
        local_m = _add_sums(own_m, foreign_m)
        reduced = {name: {k: ctx.all_reduce_sum(v) for k, v in sums.items()} for name, sums in local_m.items()}
    return Accumulated(stats, num_batches, len(done) + computed, computed, reduced)
