"""The ADM U-Net and its noisy classifier, written for this project.

Architecture of Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis" (github
openai/guided-diffusion, ``guided_diffusion/unet.py``), extended with the cross-attention
``SpatialTransformer`` blocks of Rombach et al. (2022), "High-Resolution Image Synthesis with Latent
Diffusion Models" (github CompVis/latent-diffusion, ``ldm/modules/diffusionmodules/openaimodel.py`` and
``ldm/modules/attention.py``), whose U-Net is the same network.

Module and parameter names follow the released checkpoints exactly (``input_blocks.{i}.{j}``,
``middle_block``, ``output_blocks``, ``out``, ``time_embed``, ``label_emb``; inside a residual block
``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``; attention ``norm`` / ``qkv`` /
``proj_out``; the classifier's ``AttentionPool2d`` ``positional_embedding`` / ``qkv_proj`` / ``c_proj``),
so the published state dicts load with ``strict=True``. The code is this project's own.

Numerics follow the originals: GroupNorm (32 groups) computed in float32, the sinusoidal time embedding
``[cos, sin]`` of ``t * 10000^(-i/half)``, scaled-dot-product attention with scale ``1/sqrt(head_dim)``,
"legacy" (heads before q/k/v) or "new" (q/k/v before heads) channel order of the fused qkv projection,
nearest-neighbour upsampling and stride-2 convolutions / 2x2 average pooling for resampling.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------ building blocks
class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (the ADM convention, stable under float16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` with f_i = max_period^(-i/half) (t may be fractional)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (B, T, d) tensors; softmax in float32."""
    if q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v)
    w = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1).to(q.dtype)
    return w @ v


def qkv_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head self-attention on a fused (B, 3 H C, T) projection -> (B, H C, T).

    ``legacy=True``: channels are grouped per head first, then q/k/v (ADM's ``QKVAttentionLegacy``);
    ``legacy=False``: q/k/v first, then heads (``QKVAttention``, ``use_new_attention_order``).
    """
    b, width, length = qkv.shape
    ch = width // (3 * n_heads)
    if legacy:
        q, k, v = qkv.reshape(b * n_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(b * n_heads, ch, length) for z in qkv.chunk(3, dim=1))
    out = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B H, T, C)
    return out.transpose(1, 2).reshape(b, n_heads * ch, length)


class Upsample(nn.Module):
    """2x nearest-neighbour upsampling, optionally followed by a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution or 2x2 average pooling (``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with a time-embedding injection (additive, or scale-shift after the second norm)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention over all positions (``norm``, fused ``qkv`` 1x1 conv, ``proj_out``)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels={channels} is not divisible by num_head_channels={num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, legacy=not self.new_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention with bias-free q/k/v projections (LDM ``CrossAttention``)."""

    def __init__(self, query_dim: int, context_dim: Optional[int], heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        h = self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(z.shape[0], z.shape[1], h, -1).transpose(1, 2).reshape(z.shape[0] * h, z.shape[1], -1)

        out = _attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        out = out.reshape(b, h, n, -1).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward ``net = [GEGLU(dim, 4 dim), Dropout, Linear(4 dim, dim)]``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and feed-forward, each pre-LayerNorm with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int], dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's transformer on feature maps: GroupNorm(eps 1e-6), 1x1 ``proj_in``, blocks, 1x1 ``proj_out``."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: Optional[int]) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        inner = h.shape[1]
        h = h.reshape(b, inner, hh * ww).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.transpose(1, 2).reshape(b, inner, hh, ww)
        return x + self.proj_out(h)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks get the embedding, transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# ------------------------------------------------------------------------------------------ networks
class _Trunk(nn.Module):
    """Shared constructor pieces of the U-Net and the encoder classifier."""

    def _attn(self, ch: int, num_heads: int, num_head_channels: int, cfg: Dict[str, Any]) -> nn.Module:
        if cfg["use_spatial_transformer"]:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return SpatialTransformer(ch, heads, ch // heads, cfg["transformer_depth"], cfg["context_dim"])
        return AttentionBlock(ch, num_heads, num_head_channels, cfg["use_new_attention_order"])

    def _res(self, ch: int, out: int, cfg: Dict[str, Any], **kw: Any) -> ResBlock:
        return ResBlock(ch, cfg["model_channels"] * 4, cfg["dropout"], out, cfg["use_scale_shift_norm"], **kw)


def _check_common(cfg: Dict[str, Any]) -> None:
    if cfg["num_heads"] == -1 and cfg["num_head_channels"] == -1:
        raise ValueError("set num_heads or num_head_channels (both are -1)")
    if cfg["use_spatial_transformer"] and cfg["context_dim"] is None:
        raise ValueError("use_spatial_transformer=True needs context_dim")
    if cfg["context_dim"] is not None and not cfg["use_spatial_transformer"]:
        raise ValueError("context_dim is set but use_spatial_transformer=False")


class ADMUNet(_Trunk):
    """The ADM / LDM U-Net: ``forward(x, timesteps, y=None, context=None)`` -> (B, out_channels, H, W).

    Arguments mirror guided-diffusion's ``UNetModel`` (``attention_resolutions`` are downsampling rates,
    e.g. ``(2, 4, 8)`` for 32/16/8 at 64x64) plus LDM's ``use_spatial_transformer``, ``transformer_depth``
    and ``context_dim``.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: Optional[int] = None,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        cfg = dict(locals())
        cfg.pop("self")
        cfg.pop("__class__", None)
        _check_common(cfg)
        self.config = cfg
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.num_classes = num_classes
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                layers: list = [self._res(ch, out, cfg)]
                ch = out
                if ds in attention_resolutions:
                    layers.append(self._attn(ch, num_heads, num_head_channels, cfg))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = self._res(ch, ch, cfg, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            self._res(ch, ch, cfg), self._attn(ch, num_heads, num_head_channels, cfg), self._res(ch, ch, cfg)
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                out = int(model_channels * mult)
                layers = [self._res(ch + skip_chans.pop(), out, cfg)]
                ch = out
                if ds in attention_resolutions:
                    heads = num_heads if use_spatial_transformer else num_heads_upsample
                    layers.append(self._attn(ch, heads, num_head_channels, cfg))
                if level and i == num_res_blocks:
                    up = self._res(ch, ch, cfg, up=True) if resblock_updown else Upsample(ch, conv_resample, ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                "class labels y are required for a class-conditional U-Net and refused by an unconditional one "
                f"(num_classes={self.num_classes}, got y={'None' if y is None else tuple(y.shape)})"
            )
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        if context is not None:
            context = context.to(dtype)
        h = x.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions (one output vector)."""

    def __init__(self, spatial: int, embed_dim: int, num_head_channels: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        h = qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False)
        return self.c_proj(h)[:, :, 0]


class ADMEncoderClassifier(_Trunk):
    """The noisy ImageNet classifier of guided-diffusion (``EncoderUNetModel``): ``forward(x, t) -> logits``.

    The down path and middle block of the U-Net, then GroupNorm, SiLU and a pooling head
    (``pool='attention'``: :class:`AttentionPool2d`, as released; ``'adaptive'``: global average + 1x1 conv).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "attention",
    ) -> None:
        super().__init__()
        cfg = dict(locals())
        cfg.pop("self")
        cfg.pop("__class__", None)
        cfg.update(use_spatial_transformer=False, context_dim=None, transformer_depth=1)
        _check_common(cfg)
        if pool not in ("attention", "adaptive"):
            raise ValueError(f"pool={pool!r} is not supported; allowed: ['attention', 'adaptive']")
        self.config = cfg
        self.model_channels = model_channels
        self.num_classes = out_channels
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                layers: list = [self._res(ch, out, cfg)]
                ch = out
                if ds in attention_resolutions:
                    layers.append(self._attn(ch, num_heads, num_head_channels, cfg))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
            if level != len(channel_mult) - 1:
                down = self._res(ch, ch, cfg, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            self._res(ch, ch, cfg), self._attn(ch, num_heads, num_head_channels, cfg), self._res(ch, ch, cfg)
        )
        if pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels")
            head: nn.Module = AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), head)
        else:
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, out_channels, 1), nn.Flatten()
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        h = x.to(dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h).to(x.dtype)


__all__ = [
    "ADMUNet",
    "ADMEncoderClassifier",
    "AttentionBlock",
    "SpatialTransformer",
    "ResBlock",
    "timestep_embedding",
    "qkv_attention",
]
