"""Images in [-1, 1] -> 8-bit PNG bytes (rounded to nearest, as EDM's generate.py does)."""

from __future__ import annotations

import io

import torch


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float in [-1, 1] -> (H, W, C) uint8; values outside [-1, 1] are clipped."""
    x = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0)


def to_png_bytes(img: torch.Tensor) -> bytes:
    """PNG file content of one (C, H, W) image with C = 1 (grey) or 3 (RGB)."""
    from PIL import Image

    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"a PNG needs an image of shape (C, H, W) with C in (1, 3), got {tuple(img.shape)}")
    arr = to_uint8(img).numpy()
    pil = Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
