"""Per-seed randomness of a teacher sample and the map from a unit-normal latent to x_T.

Each sample owns a CPU ``torch.Generator`` seeded with its seed. Its first draw is the latent
``randn(shape)`` (float32); class labels drawn "uniformly per seed" are the next draw from the same
generator. So a sample is the same whatever the batch size, shard layout or number of processes.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ld3.schedules import NoiseSchedule


def seed_generator(seed: int) -> torch.Generator:
    """The CPU generator that owns all randomness of the sample with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def latent_for_seed(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The unit-normal latent of one sample: ``randn(shape, generator=seed_generator(seed))`` (float32)."""
    return torch.randn(tuple(shape), generator=seed_generator(seed), dtype=torch.float32)


def latents_and_labels(
    seeds: Sequence[int], shape: Sequence[int], num_classes: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Latents (B, *shape) and, if ``num_classes > 0``, uniform labels (B,) drawn after the latent."""
    lat, lab = [], []
    for s in seeds:
        g = seed_generator(s)
        lat.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
        if num_classes > 0:
            lab.append(int(torch.randint(num_classes, (1,), generator=g)))
    latents = torch.stack(lat) if lat else torch.empty((0, *shape))
    return latents, torch.tensor(lab, dtype=torch.long)


def prior_scale(noise_schedule: NoiseSchedule) -> float:
    """Scale from a unit-normal latent to x_T: the schedule's :attr:`~ld3.schedules.NoiseSchedule.prior_scale`
    (1 for VP schedules, sigma_max for EDM)."""
    return float(noise_schedule.prior_scale)


def prior_transform(noise_schedule: NoiseSchedule, latent: torch.Tensor) -> torch.Tensor:
    """x_T from a unit-normal latent (see :func:`prior_scale`); differentiable in ``latent``."""
    scale = prior_scale(noise_schedule)
    return latent if scale == 1.0 else latent * scale
