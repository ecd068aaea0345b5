"""Architectures of the embedded ``digits`` model: a small U-Net denoiser, a noise-conditional
classifier and a clean-image digit classifier whose penultimate layer is a Frechet feature space.

All three work on 1 x 16 x 16 images in [-1, 1] (scikit-learn's 8 x 8 digits upsampled, see
:mod:`ld3.models.digits_data`). The denoiser follows the DDPM U-Net layout (Ho et al. 2020, App. B;
residual blocks with GroupNorm and a time embedding added between the convolutions, skip connections
from every block of the down path) at a much smaller size; the class embedding is added to the time
embedding, with an extra "null" class for classifier-free guidance (Ho & Salimans 2022). The
classifier for classifier guidance is the down path of the same design with a pooled linear head
(Dhariwal & Nichol 2021, Sec. 4). The network time input is continuous (the sinusoidal embedding is
differentiable in t), so solvers and learners may feed non-integer and differentiable times.

The constructors take only JSON-serialisable keyword arguments; the weight manifest stores them so a
loader can rebuild exactly the trained architecture.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ld3.schedules import NoiseScheduleVP, ddpm_linear_betas


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of a (B,) time vector: [cos(t w_i), sin(t w_i)]."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projected embedding, GroupNorm-SiLU-dropout-conv, residual."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t -> 2-layer MLP."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.emb_dim))


def _time_vector(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class DigitsUNet(nn.Module):
    """Class-conditional noise-prediction U-Net: ``net(x, t_input, y=None) -> eps``.

    Args:
        channels: channels per resolution level (16x16, 8x8, 4x4 for three levels).
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        emb_dim: width of the time / class embedding.
        num_classes: number of real classes; label ``num_classes`` is the null (unconditional) class.
        dropout: dropout inside the residual blocks.
        in_channels: image channels.
        schedule: DDPM linear-beta schedule ``{num_steps, beta_start, beta_end}`` of the model; when
            given, the network is preconditioned (below). None: ``eps = F(x, t, y)``.
        sigma_data: RMS of the data, for the preconditioning.

    Preconditioning (Karras et al. 2022, Sec. 5 and Table 1, rewritten for noise prediction on a VP
    schedule): with v_t = sqrt(sigma_t^2 + sigma_data^2 alpha_t^2), the standard deviation of x_t,

        eps(x_t, t) = (sigma_t / v_t^2) x_t + (sigma_data alpha_t / v_t) F(x_t / v_t, t, y),

    which is EDM's D = c_skip y + c_out F(c_in y) with y = x / alpha. At high noise eps ~ x_t / sigma_t
    comes from the skip term, so the output scales with the input even for atypical x_T (a plain
    GroupNorm network cannot do this and drifts off the data manifold there); at low noise F dominates.

    ``t_input`` is the network time (k in [0, 999] for the discrete VP schedule, see
    :func:`ld3.models.wrapper.model_time_input`); ``y`` are integer labels in [0, num_classes], and
    ``None`` means the null class.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        emb_dim: int = 128,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 1,
        schedule: dict | None = None,
        sigma_data: float = 0.75,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.schedule = None
        if schedule is not None:
            self.schedule = NoiseScheduleVP("discrete", betas=ddpm_linear_betas(**schedule))
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        if not channels or num_res_blocks < 1:
            raise ValueError(f"need at least one level and one block, got channels={channels}, "
                             f"num_res_blocks={num_res_blocks}")
        self.num_classes = int(num_classes)
        self.null_class = self.num_classes
        self.time_embed = TimeEmbedding(emb_dim)
        self.class_embed = nn.Embedding(self.num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch = [channels[0]]
        ch = channels[0]
        for level, c in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, c, emb_dim, dropout))
                ch = c
                skip_ch.append(ch)
            if level != len(channels) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_ch.append(ch)
        self.mid = ResBlock(ch, ch, emb_dim, dropout)

        self.up = nn.ModuleList()
        for level, c in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_ch.pop(), c, emb_dim, dropout))
                ch = c
            if level != 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def labels(self, y: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Integer labels on x's device; ``None`` -> the null class for every sample."""
        if y is None:
            return torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
        y = torch.as_tensor(y, device=x.device)
        if y.dim() == 0:
            y = y.expand(x.shape[0])
        if y.shape != (x.shape[0],) or y.is_floating_point():
            raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        t = _time_vector(t, x)
        if self.schedule is None:
            return self.backbone(x, t, y).to(dtype)
        # continuous time of the network input k: t = k / 1000 + 1 / N (model_time_input's inverse)
        tc = self.schedule.inverse_model_time_input(t.double())
        log_alpha = self.schedule.marginal_log_mean_coeff(tc, check=False)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha))
        v = torch.sqrt(sigma**2 + (self.sigma_data * alpha) ** 2)
        c_skip, c_out, c_in = (sigma / v**2, self.sigma_data * alpha / v, 1.0 / v)
        c_skip, c_out, c_in = (c.float().view(-1, 1, 1, 1) for c in (c_skip, c_out, c_in))
        return (c_skip * x + c_out * self.backbone(c_in * x, t, y)).to(dtype)

    def backbone(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net F itself (float32 input, (B,) times)."""
        emb = self.time_embed(t) + self.class_embed(self.labels(y, x))
        emb = F.silu(emb)
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        h = self.mid(h, emb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(m, ResBlock) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class NoisyDigitClassifier(nn.Module):
    """Noise-conditional classifier p(y | x_t, t): ``net(x, t_input) -> logits`` (10 classes)."""

    def __init__(
        self, channels: Sequence[int] = (32, 64, 64), emb_dim: int = 128, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.num_classes = int(num_classes)
        self.time_embed = TimeEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        ch = channels[0]
        for level, c in enumerate(channels):
            self.blocks.append(ResBlock(ch, c, emb_dim))
            ch = c
            if level != len(channels) - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.head = nn.Linear(ch, self.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.float()
        emb = F.silu(self.time_embed(_time_vector(t, x)))
        h = self.conv_in(x)
        for m in self.blocks:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t) per sample (the ``classifier_fn`` of classifier guidance)."""
        logp = F.log_softmax(self(x, t), dim=-1)
        y = torch.as_tensor(y, device=x.device)
        if y.dim() == 0:
            y = y.expand(x.shape[0])
        if y.shape != (x.shape[0],) or y.is_floating_point():
            raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if ((y < 0) | (y >= self.num_classes)).any():
            raise ValueError(f"classifier guidance labels must lie in [0, {self.num_classes - 1}], got {y.tolist()}")
        return logp.gather(1, y.long()[:, None]).squeeze(1).to(x.dtype)


class DigitFeatureNet(nn.Module):
    """Clean-image digit classifier; :meth:`features` (the penultimate layer) is the Frechet space.

    conv(c0)-conv(c0)-pool-conv(c1)-conv(c1)-pool-linear(feature_dim)-ReLU-linear(num_classes).
    Inputs are clamped to [-1, 1], the range of real images.
    """

    def __init__(
        self,
        channels: Tuple[int, int] = (32, 64),
        feature_dim: int = 64,
        num_classes: int = 10,
        dropout: float = 0.3,
        in_channels: int = 1,
        image_size: int = 16,
    ) -> None:
        super().__init__()
        c0, c1 = (int(c) for c in channels)
        self.feature_dim = int(feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c0, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c0, c0, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c1 * (image_size // 4) ** 2, self.feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float().clamp(-1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class ClassifierLogProb(nn.Module):
    """``classifier_fn(x, t_input, y) -> log p(y | x_t)`` as a module (so ``.to(device)`` moves it)."""

    def __init__(self, net: NoisyDigitClassifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net.log_prob(x, t, y)


class FeatureExtractor(nn.Module):
    """``feature_fn(images) -> (B, feature_dim)`` penultimate features; :meth:`logits` classifies."""

    def __init__(self, net: DigitFeatureNet) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = net.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES = {
    "DigitsUNet": DigitsUNet,
    "NoisyDigitClassifier": NoisyDigitClassifier,
    "DigitFeatureNet": DigitFeatureNet,
}


def build(arch: str, **kwargs) -> nn.Module:
    """Instantiate an architecture by class name with its stored keyword arguments."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown digits architecture {arch!r}; allowed: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
