"""Safe reading of PyTorch checkpoint files for the zoo (state dicts only, no code from the file runs).

``torch.load(..., weights_only=True)`` unpickles only tensors and plain containers; anything else in the
file is refused. Unreadable files (truncated downloads, HTML error pages saved as ``.pt``, wrong format)
and files whose sha256 differs from a pinned value raise :class:`CorruptModelError` naming the file and
the ``scripts/download_model.sh`` command that fetches it again, before any model is built.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ld3.models.zoo._weights import DOWNLOAD_SCRIPT
from ld3.utils import sha256_file


class CorruptModelError(ValueError):
    """A model file exists but is unreadable, incomplete or not the expected file."""


def _refetch(fetch_hint: str) -> str:
    return f"fetch it again with `bash {DOWNLOAD_SCRIPT} {fetch_hint}`"


def check_sha256(path: Path, sha256: Optional[str], what: str, fetch_hint: str) -> None:
    """Compare a file's sha256 with a pinned value (full hex digest or a prefix of at least 8 digits)."""
    if sha256 is None:
        return
    want = str(sha256).lower()
    if len(want) < 8:
        raise ValueError(f"sha256={sha256!r} for {what} is too short: give at least 8 hex digits")
    got = sha256_file(path)
    if not got.startswith(want):
        raise CorruptModelError(
            f"{what} {str(path)!r} has sha256 {got}, expected {want}: the file is truncated, corrupted or a "
            f"different file; {_refetch(fetch_hint)}"
        )


def check_weights_file(path: Path, what: str, fetch_hint: str, sha256: Optional[str] = None) -> None:
    """The checks every zoo loader runs on a weights file before reading it: its sha256 when one is pinned
    (:func:`check_sha256`), and that it is not empty. Raises :class:`CorruptModelError` naming the file and
    the ``download_model.sh`` command that fetches it again."""
    check_sha256(path, sha256, what, fetch_hint)
    if path.stat().st_size == 0:
        raise CorruptModelError(f"{what} {str(path)!r} is empty; {_refetch(fetch_hint)}")


#: module prefixes of training-run metadata that CompVis / Lightning checkpoints pickle next to the weights
#: (e.g. ``callbacks: {ModelCheckpoint: {...}}``); with ``metadata_globals=True`` they are read as inert data
METADATA_GLOBAL_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.",
                            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")


class InertGlobal:
    """Stand-in for a pickled class or function that is never imported nor run: it only records its arguments."""

    qualname = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _inert(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (InertGlobal,), {"qualname": qualname})


def _metadata_globals(path: Path) -> list:
    names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    bad = [n for n in names if not n.startswith(METADATA_GLOBAL_PREFIXES)]
    if bad:
        raise CorruptModelError(
            f"{str(path)!r} pickles code references that a weights file does not need: {sorted(bad)[:6]}; refusing "
            f"to load it (nothing from the file was run)"
        )
    return [(_inert(n), n) for n in names]


def load_torch_state(path: Path, what: str, fetch_hint: str, sha256: Optional[str] = None,
                     metadata_globals: bool = False) -> Dict[str, object]:
    """The object of a ``.pt`` / ``.ckpt`` file read with ``weights_only=True`` (after the checksum, if any).

    ``metadata_globals=True`` admits the training metadata of Lightning checkpoints (classes under
    :data:`METADATA_GLOBAL_PREFIXES`) as :class:`InertGlobal` stand-ins: still ``weights_only``
    unpickling, nothing is imported or executed; any other global reference is refused.
    """
    check_weights_file(path, what, fetch_hint, sha256)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not metadata_globals:
                try:
                    names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))[:6]
                except Exception:  # noqa: BLE001
                    names = []
                raise CorruptModelError(
                    f"{what} {str(path)!r} pickles objects other than tensors ({names or 'unknown globals'}); "
                    f"refused by weights_only=True loading (nothing from the file was run)"
                ) from None
            with torch.serialization.safe_globals(_metadata_globals(path)):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling / zip failure means the file is unusable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptModelError(
            f"cannot read {what} {str(path)!r} as a PyTorch state dict (weights_only=True): {msg}. The file may be "
            f"truncated or corrupted; {_refetch(fetch_hint)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise CorruptModelError(f"{what} {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def tensor_items(state: Mapping[str, object], what: str, path: Path) -> Dict[str, torch.Tensor]:
    out = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise CorruptModelError(f"{what} {str(path)!r} holds no tensors")
    return out


def _first(names: Sequence[str], n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path, hint: str) -> None:
    """``load_state_dict(strict=True, assign=True)`` with an error that names missing / extra / misshaped keys.

    ``module`` may live on the meta device (no memory for a random initialisation); every parameter and
    buffer is then replaced by the checkpoint's tensor.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_first(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected keys: {_first(extra)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (file vs model): {_first(shapes, 3)}")
        raise CorruptModelError(
            f"{what} {str(path)!r} does not match the architecture ({'; '.join(parts)}). {hint}"
        )
    module.load_state_dict(dict(state), strict=True, assign=True)
