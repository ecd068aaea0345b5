"""The network architectures and preconditionings of NVIDIA's EDM release, written for this project.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (github NVlabs/edm,
``training/networks.py``). The released pickles hold one of the preconditionings below wrapped around one of
two U-Nets:

* :class:`SongUNet`: DDPM++ (positional embedding, standard encoder, [1, 1] resampling) and NCSN++ (random
  Fourier embedding, residual encoder, [1, 3, 3, 1] FIR resampling) of Song et al. 2021 ("Score-Based
  Generative Modeling through SDEs"); the ``skip`` encoder / decoder variants are implemented too.
* :class:`DhariwalUNet`: ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").
* :class:`EDMPrecond` (every ``edm-*.pkl``), :class:`VPPrecond` and :class:`VEPrecond` (the ``baseline-*``
  conversions of Song et al.'s models), each a denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``.

Attribute and parameter names follow the release so that its state dict loads with ``strict=True``; the
computations (embeddings, attention channel layout, resampling filters, skip scaling) follow the paper and
the release's definitions so that outputs agree to float32 round-off. Parameters are created empty (zeros):
these modules exist to receive released weights, not to be trained from scratch.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _zeros(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


class Linear(nn.Module):
    """``y = x W^T + b`` with EDM's parameter names (``weight`` (out, in), optional ``bias``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **_init: Any) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _zeros(out_features, in_features)
        self.bias = _zeros(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        return x if self.bias is None else x + self.bias.to(x.dtype)


def _resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR filter ``f f^T / (sum f)^2`` as a (1, 1, k, k) tensor ([1, 1]: box, [1, 3, 3, 1]: NCSN++)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


class Conv2d(nn.Module):
    """3x3 / 1x1 convolution with optional 2x FIR up- or down-sampling (``kernel=0``: resampling only).

    ``fused_resample`` applies the (transposed) resampling and the convolution in the order and with the
    padding used by NCSN++'s residual encoder path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        **_init: Any,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = _zeros(out_channels, in_channels, kernel, kernel) if kernel else None
        self.bias = _zeros(out_channels) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        wp = 0 if w is None else w.shape[-1] // 2
        fp = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and (self.up or self.down):
            if self.up:
                up_f = (4 * f).repeat(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=max(fp - wp, 0))
                x = F.conv2d(x, w, padding=max(wp - fp, 0))
            else:
                x = F.conv2d(x, w, padding=wp + fp)
                x = F.conv2d(x, f.repeat(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                up_f = (4 * f).repeat(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=fp)
            if self.down:
                x = F.conv2d(x, f.repeat(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalization with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = _zeros(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _attention(qkv: torch.Tensor, num_heads: int, shape: torch.Size) -> torch.Tensor:
    """Multi-head self-attention over pixels; ``qkv`` (B, 3C, H, W) is split per head as (C/heads, 3).

    The softmax(q^T k / sqrt(d)) weights are computed in float32 whatever the input dtype.
    """
    b, c = shape[0], shape[1]
    q, k, v = qkv.reshape(b * num_heads, c // num_heads, 3, -1).unbind(2)
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    w = logits.softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", w, v).reshape(shape)


class UNetBlock(nn.Module):
    """Residual block (GroupNorm, SiLU, conv; embedding as bias or as scale/shift) with optional resampling
    and self-attention: the union of what DDPM++, NCSN++ and ADM use."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: Optional[int] = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        rs = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, **rs)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, **rs)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (orig if self.skip is None else self.skip(orig))) * self.skip_scale
        if self.num_heads:
            a = _attention(self.qkv(self.norm2(x)), self.num_heads, x.shape)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding ``[cos(x w_i), sin(x w_i)]``, w_i = max_positions^(-i / n)
    (n = C/2 - 1 with ``endpoint``, else C/2)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1.0 / self.max_positions) ** i
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi f x), sin(2 pi f x)]`` (NCSN++); ``freqs`` is a stored buffer."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.zeros(num_channels // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net (Song et al. 2021) in EDM's layout (module names ``enc.{res}x{res}_*``,
    ``dec.{res}x{res}_*``, ``map_*``)."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        _check_choice("embedding_type", embedding_type, ("fourier", "positional"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        blk = dict(
            emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
        )
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, 0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: Optional[torch.Tensor],
        augment_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos] order
        if self.map_label is not None:
            y = _drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(y * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips: List[torch.Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out: Optional[torch.Tensor] = None
        tmp: Optional[torch.Tensor] = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        assert out is not None
        return out


class DhariwalUNet(nn.Module):
    """ADM U-Net (Dhariwal & Nichol 2021) in EDM's layout: scale/shift conditioning, 64 channels per
    attention head, class embedding added to the time embedding."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        blk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: Optional[torch.Tensor],
        augment_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(class_labels, self.label_dropout, self.training))
        emb = F.silu(emb)
        skips: List[torch.Tensor] = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def _drop_labels(y: Optional[torch.Tensor], p: float, training: bool) -> torch.Tensor:
    if y is None:
        raise ValueError("this network is class-conditional: class_labels are required")
    if training and p:
        y = y * (torch.rand([y.shape[0], 1], device=y.device) >= p).to(y.dtype)
    return y


def _check_choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not supported; allowed: {list(allowed)}")


#: the U-Nets a preconditioning can wrap (its ``model_type``)
ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class _Precond(nn.Module):
    """Shared part of the preconditionings: ``forward(x, sigma, class_labels)`` -> D(x; sigma) in float32."""

    def __init__(
        self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str, **model_kwargs
    ) -> None:
        super().__init__()
        _check_choice("model_type", model_type, tuple(ARCHITECTURES))
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = ARCHITECTURES[model_type](
            img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
            label_dim=label_dim, **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor) -> tuple:  # (c_skip, c_out, c_in, c_noise)
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        force_fp32: bool = False,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma).to(device=x.device, dtype=torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * f.to(torch.float32)


class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1): c_in = 1/sqrt(sigma^2 + sd^2),
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VPPrecond(_Precond):
    """Variance-preserving preconditioning (Karras et al. 2022, Table 1, "VP"): c_skip = 1, c_out = -sigma,
    c_in = 1/sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma), sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # plain floats (also under a meta-device context)
        self.sigma_min = math.sqrt(math.expm1(0.5 * beta_d * epsilon_t**2 + beta_min * epsilon_t))
        self.sigma_max = math.sqrt(math.expm1(0.5 * beta_d + beta_min))

    def sigma(self, t: Any) -> torch.Tensor:
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance-exploding preconditioning (Karras et al. 2022, Table 1, "VE"): c_skip = 1, c_out = sigma,
    c_in = 1, c_noise = ln(sigma / 2)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        return 1, sigma, 1, (0.5 * sigma).log()


#: the preconditionings by the class name stored in the pickles
PRECONDITIONINGS: Dict[str, Callable[..., _Precond]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
}

#: every class name of EDM's ``training/networks.py`` that these modules reproduce
NETWORK_CLASSES = (
    "Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding",
    *ARCHITECTURES, *PRECONDITIONINGS,
)


def _params(fn: Callable[..., Any]) -> List[str]:
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]


def build_network(class_name: str, init_kwargs: Dict[str, Any]) -> _Precond:
    """Instantiate ``class_name`` (a preconditioning) from a pickle's ``init_kwargs``, checking every key.

    Raises ValueError naming an unsupported class, ``model_type`` or keyword.
    """
    if class_name not in PRECONDITIONINGS:
        raise ValueError(
            f"EDM network class {class_name!r} is not supported by the safe loader; supported: "
            f"{sorted(PRECONDITIONINGS)} (pass edm_repo=<NVlabs/edm checkout> only for a trusted file)"
        )
    kwargs = dict(init_kwargs)
    model_type = kwargs.get("model_type", "SongUNet" if class_name != "EDMPrecond" else "DhariwalUNet")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"EDM model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    precond_keys = set(_params(PRECONDITIONINGS[class_name].__init__)) - {"self"}
    arch_keys = set(_params(ARCHITECTURES[model_type].__init__)) - {"self", "in_channels", "out_channels"}
    unknown = sorted(set(kwargs) - precond_keys - arch_keys)
    if unknown:
        raise ValueError(
            f"EDM {class_name}/{model_type} init_kwargs {unknown} are not supported; allowed: "
            f"{sorted(precond_keys | arch_keys)}"
        )
    return PRECONDITIONINGS[class_name](**kwargs)
