"""Small models for tests/test_data.py (also imported by the subprocess the SIGKILL test starts).

All are built on the exact analytic Gaussian mixture or on a tiny random conv net, so they need no
weights and run in milliseconds.
"""

from __future__ import annotations

import os
import time
from typing import Any, List

import torch

from ld3.models.zoo import LoadedModel, load_model, register_model
from ld3.schedules import ddpm_linear_betas, make_schedule


def slow_gmm(**options: Any) -> LoadedModel:
    """The analytic GMM whose network sleeps ``$LD3_TEST_DELAY`` seconds per call (same numbers)."""
    m = load_model("analytic_gmm", **options)
    net = m.network
    delay = float(os.environ.get("LD3_TEST_DELAY", "0"))

    def slow_net(*args: Any, **kwargs: Any) -> torch.Tensor:
        if delay:
            time.sleep(delay)
        return net(*args, **kwargs)

    m.network = slow_net
    m.name = "slow_gmm"
    return m


def pixel_gmm(side: int = 4, seed: int = 0, **_: Any) -> LoadedModel:
    """The analytic GMM on 1 x side x side "images" (a pixel model PNGs can be written for)."""
    m = load_model("analytic_gmm", dim=side * side, n_components=3, seed=seed)
    m.shape = (1, side, side)
    m.name = "pixel_gmm"
    return m


class TinyConvNet(torch.nn.Module):
    """A noise predictor: the exact eps of N(0, 0.25 I) data plus a small random conv term.

    Not trained; it only needs to be a sane (bounded) model whose batched convolutions round
    differently per batch size.
    """

    def __init__(self, noise_schedule: Any, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        self.ns = noise_schedule
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(1, width, 3, padding=1)
        self.c2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.c3 = torch.nn.Conv2d(width, 1, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, width)
        self.temb = torch.nn.Linear(1, width)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor, t_input: torch.Tensor, cond: Any = None) -> torch.Tensor:
        from ld3.models.wrapper import inverse_model_time_input

        t = inverse_model_time_input(self.ns, torch.as_tensor(t_input, dtype=torch.float64)).expand(x.shape[0])
        a = self.ns.marginal_alpha(t, check=False).to(x.dtype).reshape(-1, 1, 1, 1)
        s = self.ns.marginal_std(t, check=False).to(x.dtype).reshape(-1, 1, 1, 1)
        h = torch.nn.functional.silu(self.c1(x) + self.temb(t.to(x.dtype).reshape(-1, 1))[:, :, None, None])
        h = torch.nn.functional.silu(self.norm(self.c2(h)))
        return s * x / (0.25 * a**2 + s**2) + 0.1 * torch.tanh(self.c3(h))


def conv_model(side: int = 8, seed: int = 0, **_: Any) -> LoadedModel:
    ns = make_schedule("vp_discrete", betas=ddpm_linear_betas())
    return LoadedModel(name="conv_model", noise_schedule=ns, network=TinyConvNet(ns, seed), model_type="noise",
                       shape=(1, side, side))


def latent_gmm(**_: Any) -> LoadedModel:
    """A "latent" model: GMM in R^16, decoded to 1x4x4 pixels by a fixed per-sample map (tanh)."""
    m = load_model("analytic_gmm", dim=16, n_components=4, seed=1)
    m.decode = lambda z: torch.tanh(z).reshape(z.shape[0], 1, 4, 4)
    m.name = "latent_gmm"
    return m


def text_gmm(**_: Any) -> LoadedModel:
    """A "text" model: prompts map to GMM components (length mod 4; the empty prompt is the null class)."""
    m = load_model("analytic_gmm", dim=16, n_components=4, seed=2)

    def encode(prompts: List[str]) -> torch.Tensor:
        return torch.tensor([4 if p == "" else len(p) % 4 for p in prompts], dtype=torch.long)

    m.cond_process_fn = encode
    m.num_classes = None
    m.null_class = None
    m.name = "text_gmm"
    return m


def register_slow_gmm() -> None:
    """Make ``slow_gmm`` loadable by name (only in the child process: the zoo registry is global)."""
    register_model("slow_gmm")(slow_gmm)
