"""CompVis first-stage autoencoders (VQ-reg. and KL-reg.) as diffusers ``VQModel`` / ``AutoencoderKL``.

The CompVis autoencoders (github CompVis/latent-diffusion, ``ldm/models/autoencoder.py`` and
``ldm/modules/diffusionmodules/model.py``; the VQ quantizer of github CompVis/taming-transformers) and
diffusers' ``Encoder`` / ``Decoder`` are the same networks under other parameter names. This module
builds the diffusers config from an original ``ddconfig`` and renames the checkpoint's tensors:

* ``encoder.down.{i}.block.{j}`` -> ``encoder.down_blocks.{i}.resnets.{j}`` (``nin_shortcut`` ->
  ``conv_shortcut``), ``encoder.down.{i}.downsample.conv`` -> ``encoder.down_blocks.{i}.downsamplers.0.conv``;
* ``decoder.up.{i}.block.{j}`` -> ``decoder.up_blocks.{L-1-i}.resnets.{j}`` (CompVis numbers decoder
  levels by resolution, diffusers in execution order), ``upsample.conv`` -> ``upsamplers.0.conv``;
* ``{enc,dec}.mid.block_{1,2}`` -> ``mid_block.resnets.{0,1}``; ``mid.attn_1.{norm,q,k,v,proj_out}`` ->
  ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` with 1x1-conv kernels flattened to
  linear weights; ``norm_out`` -> ``conv_norm_out``; ``quant_conv``, ``post_quant_conv`` and
  ``quantize.embedding`` keep their names.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def diffusers_config(kind: str, ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int | None) -> Dict[str, Any]:
    """The diffusers ``VQModel`` (``kind='vq'``) or ``AutoencoderKL`` (``'kl'``) config of a CompVis first stage."""
    if kind not in ("vq", "kl"):
        raise ValueError(f"first-stage kind {kind!r} is not supported; allowed: ['kl', 'vq']")
    if list(ddconfig.get("attn_resolutions") or []):
        raise ValueError(
            f"first stages with attention inside the resolution levels (attn_resolutions="
            f"{list(ddconfig['attn_resolutions'])}) are not supported; the LSUN / cin256 models use []"
        )
    if ddconfig.get("attn_type", "vanilla") != "vanilla" or ddconfig.get("use_linear_attn"):
        raise ValueError("only the 'vanilla' attention of the CompVis autoencoders is supported")
    if not ddconfig.get("resamp_with_conv", True):
        raise ValueError("resamp_with_conv=False is not supported")
    mult = list(ddconfig["ch_mult"])
    ch = int(ddconfig["ch"])
    z = int(ddconfig["z_channels"])
    cfg: Dict[str, Any] = dict(
        in_channels=int(ddconfig["in_channels"]), out_channels=int(ddconfig["out_ch"]),
        down_block_types=["DownEncoderBlock2D"] * len(mult), up_block_types=["UpDecoderBlock2D"] * len(mult),
        block_out_channels=[ch * m for m in mult], layers_per_block=int(ddconfig["num_res_blocks"]),
        act_fn="silu", latent_channels=z, norm_num_groups=32, sample_size=int(ddconfig["resolution"]),
    )
    if kind == "vq":
        if ddconfig.get("double_z", True):
            raise ValueError("a VQ first stage has double_z=False")
        cfg.update(num_vq_embeddings=int(n_embed), vq_embed_dim=int(embed_dim))
    else:
        if not ddconfig.get("double_z", True):
            raise ValueError("a KL first stage has double_z=True")
        if int(embed_dim) != z:
            raise ValueError(f"AutoencoderKL needs embed_dim == z_channels, got {embed_dim} and {z}")
    return cfg


def _resnet(src: str, dst: str, sd: Mapping[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> None:
    for a, b in _RESNET.items():
        for p in ("weight", "bias"):
            k = f"{src}.{a}.{p}"
            if k in sd:
                out[f"{dst}.{b}.{p}"] = sd[k]


def _attn(src: str, dst: str, sd: Mapping[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> None:
    for a, b in _ATTN.items():
        for p in ("weight", "bias"):
            k = f"{src}.{a}.{p}"
            if k in sd:
                v = sd[k]
                out[f"{dst}.{b}.{p}"] = v.reshape(v.shape[0], v.shape[1]) if (p == "weight" and a != "norm") else v


class _Tracked(dict):
    """A dict that remembers which keys were read."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.read: set = set()

    def __getitem__(self, k: str) -> torch.Tensor:
        self.read.add(k)
        return super().__getitem__(k)


def convert_state_dict(sd: Mapping[str, torch.Tensor], num_levels: int, num_res_blocks: int) -> Dict[str, torch.Tensor]:
    """CompVis first-stage tensors (without the ``first_stage_model.`` prefix) -> diffusers names.

    Every tensor is accounted for: a name this mapping does not know raises a ``KeyError`` naming it.
    """
    sd = _Tracked(sd)
    out: Dict[str, torch.Tensor] = {}
    for part in ("encoder", "decoder"):
        for p in ("weight", "bias"):
            for a, b in (("conv_in", "conv_in"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")):
                if f"{part}.{a}.{p}" in sd:
                    out[f"{part}.{b}.{p}"] = sd[f"{part}.{a}.{p}"]
        _resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", sd, out)
        _resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", sd, out)
        _attn(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", sd, out)
    for i in range(num_levels):
        for j in range(num_res_blocks):
            _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", sd, out)
        for p in ("weight", "bias"):
            k = f"encoder.down.{i}.downsample.conv.{p}"
            if k in sd:
                out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{p}"] = sd[k]
        k_dst = num_levels - 1 - i
        for j in range(num_res_blocks + 1):
            _resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{k_dst}.resnets.{j}", sd, out)
        for p in ("weight", "bias"):
            k = f"decoder.up.{i}.upsample.conv.{p}"
            if k in sd:
                out[f"decoder.up_blocks.{k_dst}.upsamplers.0.conv.{p}"] = sd[k]
    for k in ("quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias",
              "quantize.embedding.weight"):
        if k in sd:
            out[k] = sd[k]
    unknown = sorted(set(sd) - sd.read)
    if unknown:
        raise KeyError(f"first-stage tensors with no diffusers counterpart: {unknown[:6]}")
    return out


def build_first_stage(kind: str, ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int | None,
                      sd: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The diffusers module of a CompVis first stage, loaded strictly from its converted tensors."""
    from diffusers import AutoencoderKL, VQModel

    from ld3.models.zoo._checkpoint import CorruptModelError

    cfg = diffusers_config(kind, ddconfig, embed_dim, n_embed)
    model = VQModel(**cfg) if kind == "vq" else AutoencoderKL(**cfg)
    try:
        conv = convert_state_dict(sd, len(cfg["block_out_channels"]), cfg["layers_per_block"])
    except KeyError as e:
        raise CorruptModelError(f"first stage: {e.args[0]}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(conv))
    shapes = [k for k in own if k in conv and tuple(own[k].shape) != tuple(conv[k].shape)]
    if missing or shapes:
        raise CorruptModelError(
            f"first-stage weights do not match the {kind.upper()} config: missing {missing[:4]}, "
            f"shape mismatches {shapes[:4]}"
        )
    model.load_state_dict(conv, strict=True)
    return model.eval().requires_grad_(False)
