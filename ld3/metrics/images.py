"""Image sets for FID: folders and ``.zip`` archives of PNG/JPEG files, and the PNG export layout.

* Export: ``{root}/{seed - seed % 1000:06d}/{seed:06d}.png``, 1,000 images per folder (the layout of
  EDM's ``generate.py --subdirs``), 8-bit, rounded to nearest; written atomically.
* Reading: every image file under a folder (recursively) or inside a zip (EDM's ``dataset_tool.py``
  format: image files plus an optional ``dataset.json`` of labels, which is ignored), sorted by path,
  returned as float tensors in [-1, 1] with 1 (grey) or 3 (RGB) channels. All images of a set must
  share one size, as FID reference sets do.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch

from ld3.data.png import to_png_bytes
from ld3.utils.io import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
PathLike = Union[str, os.PathLike]


def png_path(root: PathLike, seed: int) -> Path:
    """Where the sample with ``seed`` is exported: ``root/{seed - seed % 1000:06d}/{seed:06d}.png``."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seeds must be >= 0 for the PNG layout, got {seed}")
    return Path(root) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def save_pngs(root: PathLike, seeds: Sequence[int], images: torch.Tensor) -> List[Path]:
    """Write one PNG per (seed, image in [-1, 1] of shape (C, H, W)) atomically."""
    if len(seeds) != images.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {images.shape[0]} images")
    return [atomic_write_bytes(png_path(root, s), to_png_bytes(img)) for s, img in zip(seeds, images, strict=True)]


def _decode(data: bytes, name: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("L", "I;16", "I", "1"):
            arr = np.asarray(im.convert("L"), dtype=np.uint8)[None]
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    if arr.ndim != 3:
        raise ValueError(f"could not decode {name} into (C, H, W)")
    return torch.from_numpy(arr.copy())


class ImageSet:
    """The image files of a folder or a ``.zip`` (sorted by path); ``load(indices)`` -> (B, C, H, W) in [-1, 1]."""

    def __init__(self, source: PathLike) -> None:
        self.source = Path(source)
        self._zip = None
        if self.source.is_dir():
            self.kind = "folder"
            names = [p.relative_to(self.source).as_posix() for p in self.source.rglob("*")
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        elif self.source.is_file() and self.source.suffix.lower() == ".zip":
            self.kind = "zip"
            with zipfile.ZipFile(self.source) as z:
                names = [n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
        else:
            raise ValueError(f"image source {str(self.source)!r} is neither a folder nor a .zip file")
        self.names = sorted(names)
        if not self.names:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {str(self.source)!r}")
        self._shape = None

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, name: str) -> bytes:
        if self.kind == "folder":
            return (self.source / name).read_bytes()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.source)
        return self._zip.read(name)

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        imgs = []
        for i in indices:
            img = _decode(self._read(self.names[i]), self.names[i])
            if self._shape is None:
                self._shape = tuple(img.shape)
            elif tuple(img.shape) != self._shape:
                raise ValueError(
                    f"{self.names[i]} in {str(self.source)!r} has shape {tuple(img.shape)}, the first image "
                    f"{self._shape}; a FID image set must have one size and channel count"
                )
            imgs.append(img)
        return torch.stack(imgs).float() / 127.5 - 1.0


def write_image_folder(root: PathLike, images: torch.Tensor, start: int = 0) -> Path:
    """Export images in [-1, 1] (N, C, H, W) as PNGs ``start, start+1, ...`` in the layout of :func:`png_path`."""
    save_pngs(root, list(range(start, start + images.shape[0])), images)
    return Path(root)
