"""PNG grids of images (no torchvision needed): atomic writes, small images enlarged to be seen."""

from __future__ import annotations

import io
from pathlib import Path

import torch

#: a grid cell is enlarged (nearest neighbour) until it is at least this many pixels wide
MIN_CELL_PX = 64


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, min_cell: int = MIN_CELL_PX) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> one uint8 (H', W', C) grid, each image scaled by an integer factor."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs (N, C, H, W) images with C in (1, 3), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    scale = max(1, -(-min_cell // max(h, w)))
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = h * scale, w * scale
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.permute(1, 2, 0)


def save_image_grid(images: torch.Tensor, path: Path, nrow: int = 8, min_cell: int = MIN_CELL_PX) -> Path:
    """Write :func:`image_grid` as a PNG (atomically); returns ``path``."""
    from PIL import Image

    from ld3.utils.io import atomic_write_bytes

    arr = image_grid(images, nrow=nrow, min_cell=min_cell).numpy()
    pil = Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
