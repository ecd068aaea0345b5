"""Zoo loader ``ldm``: CompVis latent diffusion models (LSUN bedroom / church, ImageNet cin256-v2).

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models" (github
CompVis/latent-diffusion). A released ``model.ckpt`` is a Lightning checkpoint whose ``state_dict`` holds
``model.diffusion_model.*`` (the U-Net), ``first_stage_model.*`` (the autoencoder), ``cond_stage_model.*``
(cin256's class embedder) and the diffusion buffers (``betas``, ``alphas_cumprod``, ..., ``scale_factor``
when ``scale_by_std``). It is read with ``torch.load(weights_only=True)`` (Lightning metadata as inert
data, see :mod:`ld3.models.zoo._checkpoint`); the architecture comes from the original YAML config
(``options.config``, or ``config.yaml`` next to the checkpoint) or from the built-in transcription of the
released configs (``options.variant``):

* ``lsun_bedroom`` (``lsun_bedrooms-ldm-vq-4.yaml``): VQ-f4 first stage, latent 3x64x64, unconditional;
* ``lsun_church`` (``lsun_churches-ldm-kl-8.yaml``): KL-f8 first stage, latent 4x32x32, unconditional,
  betas 0.0015-0.0155, ``scale_factor`` from the checkpoint (``scale_by_std``);
* ``cin256`` (``cin256-v2.yaml``): VQ-f4, latent 3x64x64, class-conditional through cross-attention on a
  learned class embedding (1001 classes, 1000 = the null class for classifier-free guidance).

The U-Net is this project's own (:class:`~ld3.models.adm_nets.ADMUNet`, the openaimodel U-Net with
``SpatialTransformer``), loaded strictly; first stages map onto diffusers' ``VQModel`` / ``AutoencoderKL``
(:mod:`ld3.models.zoo._compvis_vae`). Betas: LDM's "linear" schedule, linspace(sqrt(b0), sqrt(b1), T)^2
(``make_beta_schedule``), checked against the checkpoint's ``betas`` buffer when present. ``to_pixels`` is
``decode_first_stage``: ``first_stage.decode(z / scale_factor)`` (VQ: nearest-codebook quantization first),
without clamping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from ld3.models.adm_nets import ADMUNet
from ld3.models.zoo import LoadedModel, register_model
from ld3.models.zoo._checkpoint import CorruptModelError, load_strict, load_torch_state
from ld3.models.zoo._compvis_vae import build_first_stage
from ld3.models.zoo._weights import MissingModelError, PathLike, resolve_weights_path
from ld3.schedules import NoiseScheduleVP
from ld3.utils import resolve_device

FETCH_HINT = "ldm"
UNET_PREFIX, FIRST_PREFIX, COND_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# ------------------------------------------------------------------------------------------ released configs
_VQ_F4 = {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
    "embed_dim": 3, "n_embed": 8192, "ddconfig": {
        "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}}
_KL_F8 = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
    "embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}}
_OPENAI = "ldm.modules.diffusionmodules.openaimodel.UNetModel"


def _ldm(unet: Dict[str, Any], first: Dict[str, Any], **params: Any) -> Dict[str, Any]:
    p = {"linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "cond_stage_config": "__is_unconditional__",
         "unet_config": {"target": _OPENAI, "params": unet}, "first_stage_config": first}
    p.update(params)
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": p}}


#: the released configs (configs/latent-diffusion/*.yaml of github CompVis/latent-diffusion), transcribed
LDM_VARIANTS: Dict[str, Dict[str, Any]] = {
    "lsun_bedroom": _ldm(
        dict(image_size=64, in_channels=3, out_channels=3, model_channels=224, attention_resolutions=[8, 4, 2],
             num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_head_channels=32), _VQ_F4,
        image_size=64, channels=3),
    "lsun_church": _ldm(
        dict(image_size=32, in_channels=4, out_channels=4, model_channels=192, attention_resolutions=[1, 2, 4, 8],
             num_res_blocks=2, channel_mult=[1, 2, 2, 4, 4], num_heads=8, use_scale_shift_norm=True,
             resblock_updown=True), _KL_F8,
        linear_end=0.0155, image_size=32, channels=4, scale_by_std=True),
    "cin256": _ldm(
        dict(image_size=64, in_channels=3, out_channels=3, model_channels=192, attention_resolutions=[8, 4, 2],
             num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1, use_spatial_transformer=True,
             transformer_depth=1, context_dim=512), _VQ_F4,
        image_size=64, channels=3, cond_stage_key="class_label", conditioning_key="crossattn",
        cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder",
                           "params": {"n_classes": 1001, "embed_dim": 512, "key": "class_label"}}),
}
#: classifier-free guidance scale of LD3's cin256 setting (github vinhsuhi/LD3 configs/latent_diff_imn.yml)
CIN_GUIDANCE_SCALE = 2.0

#: openaimodel.UNetModel arguments and what ADMUNet makes of them
_UNET_ARGS = {"image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
              "dropout", "channel_mult", "conv_resample", "num_classes", "num_heads", "num_head_channels",
              "num_heads_upsample", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order",
              "use_spatial_transformer", "transformer_depth", "context_dim"}
_UNET_IGNORED = {"use_checkpoint", "use_fp16", "legacy"}  # no effect on the function computed (see adm_nets)


def unet_kwargs(params: Mapping[str, Any]) -> Dict[str, Any]:
    """``openaimodel.UNetModel`` params of an LDM config -> :class:`ADMUNet` keyword arguments."""
    unknown = sorted(set(params) - _UNET_ARGS - _UNET_IGNORED - {"dims", "n_embed"})
    if unknown:
        raise ValueError(f"unsupported openaimodel.UNetModel options {unknown}")
    if int(params.get("dims", 2)) != 2 or params.get("n_embed") is not None:
        raise ValueError("only 2-D U-Nets predicting noise are supported (dims=2, n_embed=None)")
    out = {k: v for k, v in params.items() if k in _UNET_ARGS}
    for k in ("attention_resolutions", "channel_mult"):
        out[k] = tuple(out[k])
    return out


def _model_params(cfg: Mapping[str, Any], source: str) -> Dict[str, Any]:
    try:
        p = cfg["model"]["params"]
        _ = (p["unet_config"]["params"], p["first_stage_config"]["target"])
    except (KeyError, TypeError):
        raise ValueError(f"{source} is not a CompVis LatentDiffusion config (model.params.unet_config, "
                         f"first_stage_config)") from None
    return dict(p)


def ldm_betas(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """LDM's ``make_beta_schedule('linear')``: linspace(sqrt(start), sqrt(end), T)^2 in float64."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, int(timesteps), dtype=torch.float64) ** 2


# ------------------------------------------------------------------------------------------ network
class LDMNetwork(torch.nn.Module):
    """``network(x, t_input, cond=None)`` -> eps of the latent U-Net; holds the first stage and the embedder.

    A class-conditional model (cin256) takes integer labels as ``cond`` (the null class for the
    unconditional half of classifier-free guidance); the embedder's output is the cross-attention context
    (``ClassEmbedder``: ``embedding(y)[:, None]``). ``network.to(...)`` moves all parts together.
    """

    def __init__(self, unet: ADMUNet, first_stage: torch.nn.Module, embedder: Optional[torch.nn.Embedding],
                 default_labels: Optional[int]) -> None:
        super().__init__()
        self.unet = unet
        self.first_stage = first_stage
        self.embedder = embedder
        self.default_labels = default_labels

    def forward(self, x: torch.Tensor, t_input: Any, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t_input, device=x.device, dtype=torch.float32)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        context = None
        if self.embedder is not None:
            if cond is None:
                if self.default_labels is None:
                    raise ValueError("this LDM is class-conditional: pass labels as the condition "
                                     "(or set options.class_labels)")
                cond = self.default_labels
            y = torch.as_tensor(cond, device=x.device)
            if y.is_floating_point():
                raise ValueError(f"class labels must be integers, got dtype {y.dtype}")
            y = y.long().expand(x.shape[0]) if y.dim() == 0 else y.long()
            n = self.embedder.num_embeddings
            if y.shape != (x.shape[0],) or ((y < 0) | (y >= n)).any():
                raise ValueError(f"expected {x.shape[0]} labels in [0, {n - 1}], got {y.tolist()[:8]}")
            context = self.embedder(y)[:, None]
        elif cond is not None:
            raise ValueError("this LDM is unconditional but a condition was given")
        return self.unet(x, t, context=context)

    def decode_first_stage(self, z: torch.Tensor, scale_factor: float) -> torch.Tensor:
        fs = self.first_stage
        p = next(fs.parameters())
        out = fs.decode(z.to(device=p.device, dtype=p.dtype) / scale_factor).sample
        return out.to(device=z.device, dtype=z.dtype)


@dataclass
class _Config:
    params: Dict[str, Any]
    source: str


def _config(variant: Optional[str], config: Optional[PathLike], ckpt: Path) -> _Config:
    if variant is not None and variant not in LDM_VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; allowed: {sorted(LDM_VARIANTS)}")
    if config is not None or variant is None:
        import yaml

        path = Path(config).expanduser() if config is not None else ckpt.parent / "config.yaml"
        if not path.is_file():
            if config is not None:
                raise MissingModelError(f"LDM config {str(path)!r} (options.config) not found")
            raise ValueError(
                f"cannot tell which LDM {str(ckpt)!r} is: set options.variant to one of {sorted(LDM_VARIANTS)}, or "
                f"options.config to its original YAML (none found at {str(path)!r})"
            )
        with open(path) as f:
            cfg = yaml.safe_load(f)
        return _Config(_model_params(cfg, str(path)), str(path))
    return _Config(_model_params(copy.deepcopy(LDM_VARIANTS[variant]), f"variant {variant}"), f"variant {variant}")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@register_model("ldm")
def load_ldm(
    path: PathLike | None = None,
    checkpoint: str | None = None,
    weights_dir: PathLike | None = None,
    variant: str | None = None,
    config: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    guidance_scale: float | None = None,
    class_labels: int | None = None,
    use_ema: bool = False,
    sha256: str | None = None,
) -> LoadedModel:
    """Load a CompVis LDM ``model.ckpt`` as a latent-space :class:`LoadedModel`.

    Args:
        path / checkpoint / weights_dir: the ``model.ckpt`` (``checkpoint``: a name inside ``weights_dir``).
        variant: ``lsun_bedroom``, ``lsun_church`` or ``cin256`` (the released configs); or ``config``: the
            original YAML (default without a variant: ``config.yaml`` next to the checkpoint).
        device, dtype: where and in which precision the networks run.
        guidance_scale: default CFG scale of a class-conditional model (2.0, LD3's cin256 setting).
        class_labels: labels used when a class-conditional model is called without a condition.
        use_ema: take the U-Net weights from the checkpoint's ``model_ema.*`` copies (the sampling scripts
            use the plain weights, the default).
        sha256: pinned checksum (hex digest or prefix) verified before loading.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    dev = resolve_device(device)
    ckpt = resolve_weights_path(path, checkpoint, weights_dir, "CompVis LDM checkpoint", FETCH_HINT, want_dir=False)
    cfg = _config(variant, config, ckpt)
    p = cfg.params
    ukw = unet_kwargs(p["unet_config"]["params"])
    fs_target = str(p["first_stage_config"]["target"])
    kind = {"VQModelInterface": "vq", "VQModel": "vq", "AutoencoderKL": "kl"}.get(fs_target.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(f"first stage {fs_target!r} is not supported (VQModelInterface, AutoencoderKL)")
    fsp = p["first_stage_config"]["params"]
    cs = p.get("cond_stage_config", "__is_unconditional__")
    n_classes = None
    if isinstance(cs, Mapping):
        if not str(cs.get("target", "")).endswith("ClassEmbedder"):
            raise ValueError(f"cond stage {cs.get('target')!r} is not supported (only ClassEmbedder)")
        if p.get("conditioning_key", "crossattn") != "crossattn":
            raise ValueError(f"conditioning_key={p.get('conditioning_key')!r} is not supported (crossattn)")
        n_classes = int(cs["params"].get("n_classes", 1000))
    elif cs != "__is_unconditional__":
        raise ValueError(f"cond_stage_config={cs!r} is not supported")
    betas = ldm_betas(float(p.get("linear_start", 1e-4)), float(p.get("linear_end", 2e-2)),
                      int(p.get("timesteps", 1000)))

    obj = load_torch_state(ckpt, "CompVis LDM checkpoint", FETCH_HINT, sha256, metadata_globals=True)
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not any(str(k).startswith(UNET_PREFIX) for k in state):
        raise CorruptModelError(f"CompVis LDM checkpoint {str(ckpt)!r} has no 'state_dict' with {UNET_PREFIX}* weights")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "betas" in state:  # the LatentDiffusion buffer: the schedule the model was trained with
        stored = state["betas"].double()
        if stored.shape != betas.shape or not torch.allclose(stored, betas, rtol=1e-5, atol=1e-9):
            raise CorruptModelError(
                f"the checkpoint's betas differ from linear_start/linear_end of {cfg.source}: wrong config for "
                f"{str(ckpt)!r}?"
            )
    hint = f"Is {cfg.source} the config of this checkpoint?"

    with torch.device("meta"):
        unet = ADMUNet(**ukw)
    unet_state = _strip(state, UNET_PREFIX)
    if use_ema:
        ema = {k: state.get("model_ema." + ("diffusion_model." + k).replace(".", "")) for k in unet.state_dict()}
        if any(v is None for v in ema.values()):
            raise CorruptModelError(f"options.use_ema=True but {str(ckpt)!r} has no complete model_ema.* copy")
        unet_state = ema
    load_strict(unet, unet_state, "CompVis LDM U-Net of", ckpt, hint)
    unet.eval().requires_grad_(False)
    try:
        first = build_first_stage(kind, fsp["ddconfig"], int(fsp["embed_dim"]), fsp.get("n_embed"),
                                  _strip(state, FIRST_PREFIX))
    except CorruptModelError as e:
        raise CorruptModelError(f"{str(ckpt)!r}: {e}. {hint}") from None
    embedder = None
    if n_classes is not None:
        w = state.get(COND_PREFIX + "embedding.weight")
        embed_dim = int(cs["params"]["embed_dim"])
        if w is None or tuple(w.shape) != (n_classes, embed_dim):
            raise CorruptModelError(f"{str(ckpt)!r}: missing or misshaped {COND_PREFIX}embedding.weight "
                                    f"(expected ({n_classes}, {embed_dim})). {hint}")
        embedder = torch.nn.Embedding(n_classes, embed_dim)
        embedder.weight.data.copy_(w)
        embedder.requires_grad_(False)
    if class_labels is not None and (n_classes is None or not 0 <= int(class_labels) < n_classes):
        raise ValueError(f"class_labels={class_labels!r} is invalid for a model with n_classes={n_classes}")

    sf = state.get("scale_factor")
    scale_factor = float(sf) if sf is not None else float(p.get("scale_factor", 1.0))
    network = LDMNetwork(unet, first, embedder, class_labels).to(device=dev, dtype=DTYPES[dtype])
    size = int(p.get("image_size", ukw["image_size"]))
    channels = int(p.get("channels", ukw["in_channels"]))
    null_class = n_classes - 1 if n_classes is not None else None  # cin256: 1000 of 1001

    def decode(z: torch.Tensor) -> torch.Tensor:
        """LatentDiffusion.decode_first_stage: first_stage.decode(z / scale_factor) (pixels in about [-1, 1])."""
        return network.decode_first_stage(z, scale_factor)

    def cond_process_fn(labels: Any) -> torch.Tensor:
        return torch.as_tensor(labels).long().to(next(network.parameters()).device)

    return LoadedModel(
        name="ldm",
        noise_schedule=NoiseScheduleVP("discrete", betas=betas),
        network=network,
        model_type="noise",
        shape=(channels, size, size),
        num_classes=null_class,  # the real classes 0 .. null_class - 1
        null_class=null_class,
        decode=decode,
        cond_process_fn=cond_process_fn if n_classes is not None else None,
        default_guidance="classifier-free" if n_classes is not None else "uncond",
        default_guidance_scale=float(guidance_scale if guidance_scale is not None
                                     else (CIN_GUIDANCE_SCALE if n_classes is not None else 1.0)),
        metadata={
            "path": str(ckpt),
            "config": cfg.source,
            "first_stage": kind,
            "scale_factor": scale_factor,
            "use_ema": use_ema,
            "dtype": dtype,
            "device": str(dev),
        },
    )


__all__ = ["LDM_VARIANTS", "LDMNetwork", "ldm_betas", "load_ldm", "unet_kwargs"]
