"""On-disk layout of a teacher-data directory: manifest, shards, checksums, locks.

::

    <dir>/manifest.json          format "ld3.teacher_data/1" (see docs/data.md)
    <dir>/shards/shard_<first>-<end>.pt   records of the samples at seed-list positions first..end-1
    <dir>/png/<position>.png     with save_png
    <dir>/prompts.json           text models: the resolved prompt list
    <dir>/.lock                  flock: serialises manifest read-modify-write between processes

A shard is written with ``torch.save`` to memory, hashed, and written atomically (temp file +
fsync + rename); then the manifest, updated under the lock, lists it with its sha256. A shard file
that is absent from the manifest (a crash between the two writes) is simply regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import torch

from ld3.data.config import json_safe
from ld3.utils.io import atomic_write_bytes, atomic_write_json, sha256_file

try:  # POSIX advisory locks; elsewhere locking is a no-op (one process per directory)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT = "ld3.teacher_data/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PNG_DIR = "png"


class TeacherDataError(RuntimeError):
    """A teacher-data directory is inconsistent with its manifest, or with the requested config."""


def shard_name(first: int, end: int) -> str:
    return f"{SHARD_DIR}/shard_{first:08d}-{end:08d}.pt"


def png_name(position: int) -> str:
    return f"{PNG_DIR}/{position:06d}.png"


def read_manifest(directory: Path) -> Dict[str, Any] | None:
    """The manifest of ``directory`` or None when there is none."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherDataError(f"{path} is not valid JSON ({e}); it was not written by ld3 or was edited") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TeacherDataError(f"{path} is not an ld3 teacher-data manifest (format {FORMAT!r} expected)")
    return m


def write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    covered = sum(len(s["positions"]) for s in manifest["shards"])
    manifest["num_samples"] = covered
    manifest["complete"] = covered == len(manifest["seeds"])
    atomic_write_json(Path(directory) / MANIFEST, json_safe(manifest))


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Exclusive lock on ``<directory>/.lock`` for a manifest read-modify-write."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class RunGuard:
    """Held (shared flock on ``.running``) by every generator working on a directory.

    :meth:`alone` tells whether no other generator holds it: only then are leftover temp files of
    killed runs removed (an active writer's temp file must not be deleted under it).
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._f = open(directory / ".running", "a+")
        self._alone = True
        if fcntl is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._alone = False
            fcntl.flock(self._f.fileno(), fcntl.LOCK_SH)

    def alone(self) -> bool:
        return self._alone

    def close(self) -> None:
        if not self._f.closed:
            if fcntl is not None:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()

    def __enter__(self) -> RunGuard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def remove_stale_temp_files(directory: Path) -> List[Path]:
    """Delete temp files (``.<name>.<random>.tmp``) left by killed writers; returns them."""
    removed = []
    for sub in (directory, directory / SHARD_DIR, directory / PNG_DIR):
        if sub.is_dir():
            for p in sub.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def serialize_shard(record: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(record, buf)
    return buf.getvalue()


def write_shard(directory: Path, name: str, record: Dict[str, Any]) -> Tuple[str, int]:
    """Write one shard atomically; returns (sha256, size in bytes)."""
    data = serialize_shard(record)
    atomic_write_bytes(Path(directory) / name, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def load_shard(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise TeacherDataError(f"cannot read shard {path}: {type(e).__name__}: {e}") from None


def check_shards(directory: Path, manifest: Dict[str, Any]) -> List[Tuple[Dict[str, Any], str]]:
    """Shards whose file is missing, has the wrong size, or fails its sha256: [(entry, reason)]."""
    bad = []
    for entry in manifest["shards"]:
        path = Path(directory) / entry["file"]
        if not path.is_file():
            bad.append((entry, "missing"))
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            bad.append((entry, f"size {size} bytes, manifest says {entry['bytes']} (truncated or overwritten)"))
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            bad.append((entry, f"sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}... (corrupted)"))
    return bad


def damaged_shards_error(directory: Path, bad: List[Tuple[Dict[str, Any], str]], how_to_fix: str) -> TeacherDataError:
    lines = [f"  {Path(directory) / e['file']}: {why}" for e, why in bad]
    return TeacherDataError(
        f"{len(bad)} damaged shard(s) in {directory}:\n" + "\n".join(lines) + f"\n{how_to_fix}"
    )


def covered_positions(manifest: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    """position -> the shard entry that holds it."""
    out: Dict[int, Dict[str, Any]] = {}
    for entry in manifest["shards"]:
        for p in entry["positions"]:
            out[p] = entry
    return out

