"""Where zoo loaders find weights that cannot be downloaded at run time.

Weights live in a local cache filled by ``scripts/download_model.sh``: ``$LD3_CACHE/weights`` (default
``~/.cache/ld3/weights``), which is ``${paths.weights}`` in the Hydra configs. A loader takes either an
explicit ``path`` or a ``checkpoint`` name resolved inside ``weights_dir`` (not ``name``: that is
``load_model``'s own first argument); a missing file is a
:class:`MissingModelError` (a ``FileNotFoundError``) naming the file and the script that fetches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

DOWNLOAD_SCRIPT = "scripts/download_model.sh"

PathLike = Union[str, os.PathLike]


class MissingModelError(FileNotFoundError):
    """A model file or directory that must be fetched beforehand is absent."""


def default_cache_dir() -> Path:
    """``$LD3_CACHE`` or ``~/.cache/ld3`` (same rule as ``configs/paths/default.yaml``)."""
    env = os.environ.get("LD3_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ld3"


def default_weights_dir() -> Path:
    """``<cache>/weights``: where ``scripts/download_model.sh`` puts model weights."""
    return default_cache_dir() / "weights"


def resolve_weights_path(
    path: PathLike | None,
    checkpoint: str | None,
    weights_dir: PathLike | None,
    what: str,
    fetch_hint: str,
    want_dir: bool | None = None,
) -> Path:
    """The local file/directory of a model, or an early error.

    Args:
        path: explicit location (wins over ``name``).
        checkpoint: a file or directory name inside ``weights_dir`` (default :func:`default_weights_dir`).
        what: what the file is, for messages (e.g. ``EDM network pickle``).
        fetch_hint: the ``download_model.sh`` arguments that fetch it (e.g. ``edm``).
        want_dir: True / False to require a directory / a regular file; None accepts either.
    """
    if path is None and checkpoint is None:
        raise ValueError(f"{what}: give options.path (a local path) or options.checkpoint (a name inside weights_dir)")
    if path is not None:
        p = Path(path).expanduser()
        origin = "options.path"
    else:
        base = Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()
        p = base / str(checkpoint)
        origin = f"options.checkpoint={checkpoint!r} in weights_dir={str(base)!r}"
    if not p.exists():
        raise MissingModelError(
            f"{what} not found: {str(p)!r} ({origin}). Model weights cannot be downloaded at run time; fetch "
            f"them beforehand with `bash {DOWNLOAD_SCRIPT} {fetch_hint}` (it fills $LD3_CACHE/weights, default "
            f"~/.cache/ld3/weights), or set options.path to an existing local copy."
        )
    if want_dir is True and not p.is_dir():
        raise ValueError(f"{what}: {str(p)!r} must be a directory, but it is a file")
    if want_dir is False and not p.is_file():
        raise ValueError(f"{what}: {str(p)!r} must be a file, but it is a directory")
    return p
