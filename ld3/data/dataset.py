"""Reading teacher data: ``TeacherDataset`` for ld3 directories and for the LD3 reference's format.

* ld3 format (``manifest.json`` + shards, written by :func:`ld3.data.generate_teacher_data`): the
  shards are verified against their sha256 on open (``verify``); samples come in seed-list order.
* LD3 reference format (github.com/vinhsuhi/LD3 ``gen_data.py``): a directory of
  ``latent_{idx:06d}.pt`` files, each ``{latent, img, c, uc}``, read in index order (the reference's
  ``load_data_from_dir``). Seeds are unknown there (``seed`` is None).

Each item is ``{"latent", "img", "cond", "uncond", "seed"}``; absent conditions are None. Use
``collate_fn=TeacherDataset.collate`` with a DataLoader (it stacks tensors, keeps prompt lists,
and passes None through).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ld3.data.store import MANIFEST, TeacherDataError, check_shards, damaged_shards_error, load_shard, read_manifest

_LD3_FILE = re.compile(r"latent_(\d+)\.pt$")
_PRELOAD_BYTES = 1 << 30


class TeacherDataset(Dataset):
    """Teacher samples of one directory (ld3 or LD3-reference format, detected automatically).

    Args:
        path: the data directory.
        limit: keep only the first ``limit`` samples (in seed-list / file-index order).
        verify: check every shard's sha256 against the manifest on open (ld3 format).
        require_complete: refuse a directory whose generation has not finished (ld3 format).
        preload: load everything into memory on open; default: when the data is under 1 GiB.
    """

    def __init__(
        self,
        path: Union[str, Path],
        limit: int | None = None,
        verify: bool = True,
        require_complete: bool = True,
        preload: bool | None = None,
    ) -> None:
        self.path = Path(path)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        if not self.path.is_dir():
            raise FileNotFoundError(f"teacher data directory {str(self.path)!r} does not exist; run gen_data.py")
        self.manifest: Dict[str, Any] | None = None
        self._cache: OrderedDict[str, Dict[str, Any]] = OrderedDict()
        if (self.path / MANIFEST).exists():
            self.format = "ld3"
            self._open_ld3(verify, require_complete)
        else:
            files = sorted(
                ((int(m.group(1)), p) for p in self.path.iterdir() if (m := _LD3_FILE.match(p.name))),
                key=lambda t: t[0],
            )
            if not files:
                raise TeacherDataError(
                    f"{self.path} is neither an ld3 teacher-data directory (no {MANIFEST}) nor an LD3-reference "
                    "directory (no latent_XXXXXX.pt files)"
                )
            self.format = "ld3_reference"
            self._items: List[Tuple[str, int]] = [(str(p), -1) for _, p in files]
            self._seeds: List[int | None] = [None] * len(files)
        if limit is not None:
            self._items = self._items[:limit]
            self._seeds = self._seeds[:limit]
        total = self._total_bytes()
        if preload if preload is not None else total <= _PRELOAD_BYTES:
            self._max_cache = len({f for f, _ in self._items}) or 1
            for f in dict.fromkeys(f for f, _ in self._items):
                self._load(f)
        else:
            self._max_cache = 4

    # ------------------------------------------------------------------ opening
    def _open_ld3(self, verify: bool, require_complete: bool) -> None:
        m = read_manifest(self.path)
        assert m is not None
        self.manifest = m
        if require_complete and not m.get("complete", False):
            raise TeacherDataError(
                f"teacher data in {self.path} is incomplete ({m.get('num_samples', 0)} of {len(m['seeds'])} "
                "samples); rerun the same gen_data.py command to finish it"
            )
        if not m.get("identity", {}).get("save_pt", True):
            raise TeacherDataError(f"{self.path} was generated with save_pt=false: it stores no teacher images")
        if verify:
            bad = check_shards(self.path, m)
            if bad:
                raise damaged_shards_error(
                    self.path, bad, "Rerun gen_data.py with repair=true (same options) to regenerate them."
                )
        rows = []
        for entry in m["shards"]:
            for i, (p, s) in enumerate(zip(entry["positions"], entry["seeds"], strict=True)):
                rows.append((p, str(self.path / entry["file"]), i, s))
        rows.sort()
        self._items = [(f, i) for _, f, i, _ in rows]
        self._seeds = [s for _, _, _, s in rows]

    def _total_bytes(self) -> int:
        files = dict.fromkeys(f for f, _ in self._items)
        return sum(Path(f).stat().st_size for f in files if Path(f).exists())

    def _load(self, file: str) -> Dict[str, Any]:
        if file in self._cache:
            self._cache.move_to_end(file)
            return self._cache[file]
        rec = load_shard(Path(file))
        if self.format == "ld3":
            # rows of a shard are in position order; check the file is the one the manifest describes
            if "img" not in rec or "latent" not in rec:
                raise TeacherDataError(f"shard {file} lacks 'img' or 'latent'")
        elif not isinstance(rec, dict) or "latent" not in rec or "img" not in rec:
            raise TeacherDataError(f"{file} is not an LD3 teacher file (expected a dict with latent, img, c, uc)")
        self._cache[file] = rec
        while len(self._cache) > self._max_cache:
            self._cache.popitem(last=False)
        return rec

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        file, row = self._items[idx]
        rec = self._load(file)
        if self.format == "ld3_reference":
            return {"latent": rec["latent"], "img": rec["img"], "cond": rec.get("c"), "uncond": rec.get("uc"),
                    "seed": None}
        return {
            "latent": rec["latent"][row],
            "img": rec["img"][row],
            "cond": _row(rec.get("cond"), row),
            "uncond": _row(rec.get("uncond"), row),
            "seed": int(rec["seed"][row]),
        }

    @property
    def seeds(self) -> List[int | None]:
        return list(self._seeds)

    @property
    def img_space(self) -> str:
        return (self.manifest or {}).get("img_space", "pixel")

    @staticmethod
    def collate(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """Batch items: tensors stacked, strings listed, ints to a tensor, all-None to None."""
        out: Dict[str, Any] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            if all(v is None for v in vals):
                out[key] = None
            elif all(isinstance(v, torch.Tensor) for v in vals):
                out[key] = torch.stack(vals)
            elif all(isinstance(v, int) for v in vals):
                out[key] = torch.tensor(vals, dtype=torch.long)
            else:
                out[key] = list(vals)
        return out


def _row(v: Any, i: int) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: _row(x, i) for k, x in v.items()}
    return v[i]
