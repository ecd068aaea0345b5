"""Figures of an LD3 run: the training curve and the learned schedule in lambda space (PNG, Agg backend)."""

from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Mapping, Sequence

import torch

from ld3.schedules import NoiseSchedule
from ld3.utils.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_training_curve(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Training loss per step, validation and best loss per check (log scale), and learning rates."""
    plt = _pyplot()
    tr = [(h["iter"], h["train_loss"]) for h in history if h.get("kind") == "train"]
    va = [(h["iter"], h["valid_loss"], h["best_loss"]) for h in history if h.get("kind") == "valid"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if tr:
        ax.plot([a for a, _ in tr], [b for _, b in tr], lw=0.8, alpha=0.6, label="train batch loss")
    if va:
        ax.plot([a for a, _, _ in va], [b for _, b, _ in va], "o-", ms=2.5, lw=1, label="validation loss")
        ax.plot([a for a, _, _ in va], [c for _, _, c in va], "-", lw=1.5, label="best validation loss")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    rows = [h for h in history if h.get("kind") in ("train", "valid") and "lr1" in h]
    if rows:
        ax2.plot([h["iter"] for h in rows], [h["lr1"] for h in rows], label="lr params1")
        ax2.plot([h["iter"] for h in rows], [h["lr2"] for h in rows], label="lr params2")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("training step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_schedule(
    noise_schedule: NoiseSchedule,
    learned_t1: torch.Tensor,
    learned_t2: torch.Tensor,
    baselines: Dict[str, torch.Tensor],
    path: str | os.PathLike,
    title: str = "",
    scores: Dict[str, float] | None = None,
) -> None:
    """Top: lambda(t_i) against step i for the learned grid and the hand-crafted ones (legend: held-out
    ``scores`` where given, key ``learned`` for LD3). Bottom: the network-time offset lambda(t2) - lambda(t1),
    which is too small to see on the top panel."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    scores = scores or {}

    def lam(t: torch.Tensor) -> List[float]:
        return noise_schedule.marginal_lambda(t.detach().cpu().double(), check=False).tolist()

    def label(name: str, key: str) -> str:
        return f"{name} (held-out {scores[key]:.4g})" if key in scores else name

    for name, t in baselines.items():
        ax.plot(range(len(t)), lam(t), ".--", lw=1, alpha=0.8, label=label(name, name))
    ax.plot(range(len(learned_t1)), lam(learned_t1), "o-", ms=6, lw=2, color="k",
            label=label("learned t1", "learned"))
    ax.set_ylabel("lambda(t_i) = log(alpha/sigma)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    l1, l2 = lam(learned_t1), lam(learned_t2)
    ax2.axhline(0.0, color="0.6", lw=0.8)
    ax2.plot(range(len(l1)), [b - a for a, b in zip(l1, l2, strict=True)], "x-", color="crimson", ms=7,
             label="learned t2 - t1 (network time vs integration time)")
    ax2.set_xlabel("step i")
    ax2.set_ylabel("lambda(t2) - lambda(t1)")
    ax2.set_xticks(range(len(l1)))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sample_rows(rows: Dict[str, torch.Tensor], path: str | os.PathLike, title: str = "") -> None:
    """One row of images (N, C, H, W in [-1, 1]) per named entry, labelled, each image enlarged (nearest)."""
    from ld3.utils.images import image_grid

    plt = _pyplot()
    n = len(rows)
    first = next(iter(rows.values()))
    per_row = first.shape[0]
    fig, axes = plt.subplots(n, 1, figsize=(1.1 * per_row + 1.8, 1.3 * n + 0.5), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], rows.items(), strict=True):
        grid = image_grid(imgs, nrow=per_row).numpy()
        ax.imshow(grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
