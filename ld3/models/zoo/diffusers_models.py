"""Zoo loaders for local models in Hugging Face ``diffusers`` format.

* ``stable_diffusion``: Stable Diffusion v1.x/v2.x (Rombach et al. 2022, "High-Resolution Image Synthesis
  with Latent Diffusion Models") from a local diffusers pipeline directory (``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or from one original ``.ckpt`` / ``.safetensors``
  file (through diffusers' ``from_single_file``, with ``single_file_config`` a local directory holding
  the pipeline's diffusers configs). The model works in the VAE latent space (C, H/f, W/f), f = 8.
  Text conditions are lists of prompt strings (one per sample) mapped to CLIP text embeddings by
  ``cond_process_fn`` (tokenizer padded to ``model_max_length``, last hidden state of the text encoder,
  as diffusers' ``StableDiffusionPipeline.encode_prompt`` and CompVis' ``FrozenCLIPEmbedder``); the empty
  prompt ``""`` is the unconditional condition. Classifier-free guidance (Ho & Salimans 2022) with scale
  7.5 is the default, as in LD3 (github vinhsuhi/LD3 ``configs/stable_diff_v1-*.yml``).
  ``decode`` maps latents to pixels in [-1, 1]: ``vae.decode(z / scaling_factor)`` (no clamping, as
  CompVis' ``decode_first_stage`` used by LD3; ``clamp_decoded=True`` clamps).
* ``diffusers_unet``: a pixel-space ``UNet2DModel`` (e.g. DDPM CIFAR10 / LSUN ``google/ddpm-*``),
  unconditional or class-conditional (``num_class_embeds``).

Both use a discrete :class:`~ld3.schedules.NoiseScheduleVP` built from the betas described by the
scheduler config (``beta_schedule`` in linear, scaled_linear, squaredcos_cap_v2, sigmoid, or
``trained_betas``), computed in float64; the network gets t_input = 1000 (t - 1/N) (DPM-Solver's
convention for discrete-time models). ``prediction_type`` epsilon / v_prediction / sample maps to
``model_type`` noise / v / x_start.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from ld3.models.zoo import LoadedModel, register_model
from ld3.models.zoo._weights import MissingModelError, PathLike, resolve_weights_path
from ld3.schedules import NoiseScheduleVP
from ld3.utils import resolve_device

#: diffusers' prediction_type -> ld3 model_type
PREDICTION_TYPES = {"epsilon": "noise", "v_prediction": "v", "sample": "x_start"}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: components of a Stable Diffusion pipeline directory that the loader reads
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


# ------------------------------------------------------------------------------------------ betas
def _betas_linear(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def _betas_scaled_linear(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Linear in sqrt(beta) (the latent-diffusion / Stable Diffusion schedule)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


def _betas_squaredcos_cap_v2(n: int, beta_start: float, beta_end: float, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule: beta_i = min(1 - abar((i+1)/n) / abar(i/n), 0.999)."""
    i = torch.arange(n, dtype=torch.float64)

    def abar(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.clamp(1 - abar((i + 1) / n) / abar(i / n), max=max_beta)


def _betas_sigmoid(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES: Dict[str, Callable[..., torch.Tensor]] = {
    "linear": _betas_linear,
    "scaled_linear": _betas_scaled_linear,
    "squaredcos_cap_v2": _betas_squaredcos_cap_v2,
    "sigmoid": _betas_sigmoid,
}


def betas_from_scheduler_config(config: Dict[str, Any]) -> torch.Tensor:
    """The float64 training betas described by a diffusers scheduler config."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "rescale_betas_zero_snr=True gives alphas_cumprod[-1] = 0 (infinite noise level at t = T), which "
            "NoiseScheduleVP does not support"
        )
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64).flatten()
        if betas.numel() != n:
            raise ValueError(f"trained_betas has {betas.numel()} entries but num_train_timesteps={n}")
        return betas
    kind = config.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule={kind!r} is not supported; allowed: {sorted(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[kind](n, float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))


def schedule_from_scheduler_config(config: Dict[str, Any]) -> NoiseScheduleVP:
    """A discrete VP schedule with the betas of a diffusers scheduler config."""
    return NoiseScheduleVP("discrete", betas=betas_from_scheduler_config(config))


def model_type_from_scheduler_config(config: Dict[str, Any]) -> str:
    pred = config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={pred!r} is not supported; allowed: {sorted(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[pred]


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        raise MissingModelError(
            f"{what} not found: {str(path)!r}. Fetch the model with `bash scripts/download_model.sh` "
            f"(see docs/zoo.md for the expected layout)"
        )
    with open(path) as f:
        return json.load(f)


def _dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def _per_sample(t_input: Any, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t_input, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


# ------------------------------------------------------------------------------------------ Stable Diffusion
class PromptEncoder:
    """Prompts -> CLIP text embeddings (B, L, D) with a small LRU cache of per-prompt embeddings.

    Tokens are padded / truncated to ``tokenizer.model_max_length`` and the text encoder's last hidden
    state is returned (diffusers ``StableDiffusionPipeline.encode_prompt``; CompVis ``FrozenCLIPEmbedder``).
    Tensors are passed through: precomputed embeddings (e.g. stored with teacher data) work too. Results
    live on the text encoder's current device (it follows ``LoadedModel.network.to(...)``).
    """

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, cache_size: int = 256) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        cfg = getattr(text_encoder, "config", None)
        self.use_attention_mask = bool(getattr(cfg, "use_attention_mask", False))

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def _encode(self, prompts: List[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        dev = self.device
        mask = tok.attention_mask.to(dev) if self.use_attention_mask else None
        return self.text_encoder(tok.input_ids.to(dev), attention_mask=mask).last_hidden_state

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        dev = self.device
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache or self._cache[p].device != dev]
        if missing:
            for p, e in zip(missing, self._encode(missing), strict=True):
                self._cache[p] = e
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        result = torch.stack(out)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def __call__(self, cond: Any) -> torch.Tensor:
        if isinstance(cond, torch.Tensor):
            return cond.to(self.device)
        if isinstance(cond, str):
            cond = [cond]
        if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, str) for c in cond):
            return self.encode(list(cond))
        raise ValueError(
            "a Stable Diffusion condition must be a prompt string, a non-empty list of prompt strings (one per "
            f"sample; '' is the unconditional prompt) or a tensor of text embeddings, got {type(cond).__name__}"
        )


class TextUNet(torch.nn.Module):
    """``network(x, t_input, cond) -> unet(x, t_input, encoder_hidden_states=cond).sample``.

    ``cond`` is a batch of text embeddings (B, L, D) or a single one (1, L, D) shared by all samples;
    without one, the empty prompt's embedding is used (unconditional sampling). The VAE and the text
    encoder are submodules too, so ``network.to(device)`` moves the whole model (``decode`` and
    ``cond_process_fn`` follow); ``network.tokenizer`` and ``network.prompt_encoder`` are plain attributes.
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any,
                 prompt_cache_size: int = 256) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.prompt_encoder = PromptEncoder(tokenizer, text_encoder, cache_size=prompt_cache_size)

    def forward(self, x: torch.Tensor, t_input: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.unet.dtype
        if cond is None:
            cond = self.prompt_encoder.encode([""])
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3:
            raise ValueError(
                "the text condition must be a tensor of embeddings (B, L, D) (use cond_process_fn / "
                f"LoadedModel.model_fn to encode prompts), got {type(cond).__name__}"
                + (f" of shape {tuple(cond.shape)}" if isinstance(cond, torch.Tensor) else "")
            )
        if cond.shape[0] == 1 and x.shape[0] > 1:
            cond = cond.expand(x.shape[0], -1, -1)
        elif cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"got {cond.shape[0]} text embeddings for a batch of {x.shape[0]} latents; give one prompt per "
                f"sample (or a single prompt)"
            )
        t = _per_sample(t_input, x).to(torch.float32)
        out = self.unet(x.to(dtype), t, encoder_hidden_states=cond.to(device=x.device, dtype=dtype)).sample
        return out.to(x.dtype)


def _check_sd_dir(root: Path) -> None:
    missing = [s for s in SD_SUBFOLDERS if not (root / s).is_dir()]
    if missing:
        raise MissingModelError(
            f"{str(root)!r} is not a complete diffusers Stable Diffusion directory: missing {missing} (needs "
            f"{list(SD_SUBFOLDERS)}). Fetch it with `bash scripts/download_model.sh sd` "
            f"(huggingface-cli), or point options.path at a .ckpt/.safetensors file."
        )


def _load_sd_components(root: Path, torch_dtype: torch.dtype, variant: str | None) -> Dict[str, Any]:
    from ld3.utils.extras import require

    require("diffusers", "zoo", "Stable Diffusion models")
    require("transformers", "zoo", "Stable Diffusion models")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    _check_sd_dir(root)
    kw = dict(local_files_only=True, variant=variant)
    return {
        "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype, **kw),
        "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch_dtype, **kw),
        "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype, **kw),
        "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        "scheduler_config": _read_json(root / "scheduler" / "scheduler_config.json", "scheduler config"),
    }


#: key prefix of the CLIP text encoder inside CompVis Stable Diffusion v1 checkpoints (``FrozenCLIPEmbedder``)
SD_TEXT_PREFIX = "cond_stage_model.transformer."


def read_single_file_state(file: Path, what: str = "Stable Diffusion checkpoint",
                           fetch_hint: str = "sd") -> Dict[str, torch.Tensor]:
    """The tensors of a CompVis-layout ``.safetensors`` / ``.ckpt`` file, without running code from it.

    ``.ckpt`` files are read with ``torch.load(weights_only=True)``; Lightning training metadata pickled next
    to the weights is admitted as inert data (:func:`ld3.models.zoo._checkpoint.load_torch_state`). The
    weights are the (possibly nested) ``state_dict`` entry.
    """
    from ld3.models.zoo._checkpoint import CorruptModelError, load_torch_state

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(file))
        except Exception as e:  # noqa: BLE001 - header / length errors of a truncated file
            raise CorruptModelError(
                f"cannot read {what} {str(file)!r} as safetensors ({e}); the file may be truncated or corrupted: "
                f"fetch it again with `bash scripts/download_model.sh {fetch_hint}`"
            ) from None
    else:
        obj = load_torch_state(file, what, fetch_hint, metadata_globals=True)
    while isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith("model.diffusion_model.") for k in state):
        raise CorruptModelError(
            f"{what} {str(file)!r} has no 'model.diffusion_model.*' weights: not a CompVis-layout checkpoint"
        )
    return state


def sd_text_encoder_state(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The checkpoint's CLIP tensors (``cond_stage_model.transformer.*``) under the names of ``own``.

    Released files name them ``text_model.*`` (transformers 4.x; very old versions had no such level); the
    installed transformers may or may not use that level. ``position_ids`` (a buffer only some versions
    save) is taken from ``own`` when the file lacks it and dropped when the model has none.
    """
    sub = {k[len(SD_TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(SD_TEXT_PREFIX)}
    own_level = any(k.startswith("text_model.") for k in own)

    def rename(k: str) -> str:
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        return "text_model." + k if own_level else k

    sub = {rename(k): v for k, v in sub.items()}
    pid = rename("embeddings.position_ids")
    if pid in own:
        sub.setdefault(pid, own[pid])
    else:
        sub.pop(pid, None)
    return sub


def _load_sd_text_encoder(state: Dict[str, torch.Tensor], cfg: Path, torch_dtype: torch.dtype, file: Path) -> Any:
    """CLIPTextModel from the diffusers config in ``cfg/text_encoder`` and the checkpoint's CLIP weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ld3.models.zoo._checkpoint import load_strict

    if not any(k.startswith(SD_TEXT_PREFIX) for k in state):
        raise ValueError(f"{str(file)!r} holds no CLIP text encoder weights ({SD_TEXT_PREFIX}*)")
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder", local_files_only=True))
    sub = sd_text_encoder_state(state, model.state_dict())
    load_strict(model, sub, "CLIP text encoder of", file, "Check options.single_file_config/text_encoder/config.json.")
    return model.to(torch_dtype)


def _load_sd_single_file(file: Path, config_dir: PathLike | None, torch_dtype: torch.dtype) -> Dict[str, Any]:
    """A CompVis-layout single file: U-Net and VAE through diffusers' own key conversion, CLIP by prefix."""
    if config_dir is None:
        raise ValueError(
            f"loading the single file {str(file)!r} offline needs options.single_file_config: a local directory with "
            f"the pipeline's diffusers configs (unet/config.json, vae/config.json, text_encoder/config.json, "
            f"tokenizer/, scheduler/scheduler_config.json), e.g. a stable-diffusion-v1-5 directory from "
            f"`bash scripts/download_model.sh sd`"
        )
    cfg = Path(config_dir).expanduser()
    need = ["unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer",
            "scheduler/scheduler_config.json"]
    missing = [n for n in need if not (cfg / n).exists()]
    if missing:
        raise MissingModelError(
            f"options.single_file_config={str(cfg)!r} lacks {missing}; fetch the configs with "
            f"`bash scripts/download_model.sh sd`"
        )
    state = read_single_file_state(file)
    from ld3.utils.extras import require

    require("diffusers", "zoo", "Stable Diffusion single-file checkpoints")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    kw = dict(config=str(cfg), local_files_only=True, torch_dtype=torch_dtype)
    return {
        "unet": UNet2DConditionModel.from_single_file(state, subfolder="unet", **kw),
        "vae": AutoencoderKL.from_single_file(state, subfolder="vae", **kw),
        "text_encoder": _load_sd_text_encoder(state, cfg, torch_dtype, file),
        "tokenizer": CLIPTokenizer.from_pretrained(cfg / "tokenizer", local_files_only=True),
        "scheduler_config": _read_json(cfg / "scheduler" / "scheduler_config.json", "scheduler config"),
    }


def require_zoo_extra(feature: str) -> None:
    """Fail first, with one line naming the ``zoo`` extra, when diffusers / transformers are missing."""
    from ld3.utils.extras import require

    for mod in ("diffusers", "transformers"):
        require(mod, "zoo", feature)


@register_model("stable_diffusion")
def load_stable_diffusion(
    path: PathLike | None = None,
    checkpoint: str | None = None,
    weights_dir: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    variant: str | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance_scale: float = 7.5,
    single_file_config: PathLike | None = None,
    clamp_decoded: bool = False,
    vae_slicing: bool = False,
    prompt_cache_size: int = 256,
    sha256: str | None = None,
) -> LoadedModel:
    """Load Stable Diffusion as a latent-space :class:`LoadedModel` with text classifier-free guidance.

    Args:
        path: a diffusers pipeline directory or a ``.ckpt``/``.safetensors`` file; or ``checkpoint``: its name
            inside ``weights_dir`` (default ``$LD3_CACHE/weights``; configs pass ``${paths.weights}``).
        device, dtype: where and in which precision (float32, float16, bfloat16) the networks run.
        variant: diffusers weight variant (e.g. ``fp16``) of a pipeline directory.
        height, width: image size in pixels (default: the UNet's sample_size times the VAE factor, 512 for
            v1.x); the latent shape is (C, height/f, width/f).
        guidance_scale: the default CFG scale (7.5).
        single_file_config: for a single-file checkpoint, a local directory with the diffusers configs.
        clamp_decoded: clamp decoded pixels to [-1, 1].
        vae_slicing: decode one image at a time (saves memory at 512x512).
        sha256: pinned checksum (hex digest or prefix) of a single-file checkpoint, verified before loading.
    """
    require_zoo_extra("Stable Diffusion models")
    if height is not None and width is None or width is not None and height is None:
        raise ValueError(f"give both height and width or neither, got height={height}, width={width}")
    torch_dtype = _dtype(dtype)
    dev = resolve_device(device)
    src = resolve_weights_path(path, checkpoint, weights_dir, "Stable Diffusion model", "sd")
    if src.is_dir():
        if sha256 is not None:
            raise ValueError("options.sha256 applies to a single-file checkpoint, not to a pipeline directory")
        parts = _load_sd_components(src, torch_dtype, variant)
    elif src.suffix in SINGLE_FILE_SUFFIXES:
        from ld3.models.zoo._checkpoint import check_sha256

        if single_file_config is not None:
            check_sha256(src, sha256, "Stable Diffusion checkpoint", "sd")
        parts = _load_sd_single_file(src, single_file_config, torch_dtype)
    else:
        raise ValueError(
            f"{str(src)!r} is neither a diffusers pipeline directory nor a single-file checkpoint "
            f"(allowed suffixes: {list(SINGLE_FILE_SUFFIXES)})"
        )
    unet = parts["unet"].to(dev).eval().requires_grad_(False)
    vae = parts["vae"].to(dev).eval().requires_grad_(False)
    text_encoder = parts["text_encoder"].to(dev).eval().requires_grad_(False)
    if vae_slicing:
        vae.enable_slicing()
    sched_cfg = parts["scheduler_config"]
    ns = schedule_from_scheduler_config(sched_cfg)
    model_type = model_type_from_scheduler_config(sched_cfg)

    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if height is None:
        height = width = int(unet.config.sample_size) * vae_factor
    if height % vae_factor or width % vae_factor:
        raise ValueError(f"height={height} and width={width} must be multiples of the VAE factor {vae_factor}")
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None)

    network = TextUNet(unet, vae, text_encoder, parts["tokenizer"], prompt_cache_size=prompt_cache_size)

    def decode(z: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] (``vae.decode(z / scaling_factor [+ shift_factor])``)."""
        v = network.vae
        zz = z.to(device=next(v.parameters()).device, dtype=v.dtype) / scaling
        if shift is not None:
            zz = zz + shift
        img = v.decode(zz).sample.to(device=z.device, dtype=z.dtype)
        return img.clamp(-1.0, 1.0) if clamp_decoded else img

    return LoadedModel(
        name="stable_diffusion",
        noise_schedule=ns,
        network=network,
        model_type=model_type,
        shape=(int(unet.config.in_channels), height // vae_factor, width // vae_factor),
        num_classes=None,
        null_class=None,
        decode=decode,
        cond_process_fn=network.prompt_encoder,
        default_guidance="classifier-free",
        default_guidance_scale=float(guidance_scale),
        metadata={
            "path": str(src),
            "prediction_type": sched_cfg.get("prediction_type", "epsilon"),
            "scheduler_config": dict(sched_cfg),
            "height": height,
            "width": width,
            "vae_scale_factor": vae_factor,
            "scaling_factor": scaling,
            "unconditional_prompt": "",
            "dtype": dtype,
            "device": str(dev),
        },
    )


# ------------------------------------------------------------------------------------------ UNet2DModel
class ClassUNet(torch.nn.Module):
    """``network(x, t_input, cond=None) -> unet(x, t_input, class_labels=cond).sample`` (first C channels)."""

    def __init__(self, unet: torch.nn.Module, num_classes: int | None, default_labels: int | None) -> None:
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes
        self.default_labels = default_labels
        self.in_channels = int(unet.config.in_channels)

    def forward(self, x: torch.Tensor, t_input: torch.Tensor, cond: Any = None) -> torch.Tensor:
        dtype = self.unet.dtype
        t = _per_sample(t_input, x).to(torch.float32)
        labels = None
        if self.num_classes is not None:
            if cond is None:
                if self.default_labels is None:
                    raise ValueError(
                        f"the UNet is class-conditional ({self.num_classes} classes): pass condition=<labels> to "
                        f"model_fn, or set options.class_labels"
                    )
                cond = torch.full((x.shape[0],), self.default_labels, dtype=torch.long)
            labels = torch.as_tensor(cond, device=x.device).long()
            if labels.dim() == 0:
                labels = labels.expand(x.shape[0])
        elif cond is not None:
            raise ValueError("the UNet is unconditional but a condition was given")
        out = self.unet(x.to(dtype), t, class_labels=labels).sample
        return out[:, : self.in_channels].to(x.dtype)  # learned-variance models output (eps, var) channels


@register_model("diffusers_unet")
def load_diffusers_unet(
    path: PathLike | None = None,
    checkpoint: str | None = None,
    weights_dir: PathLike | None = None,
    subfolder: str | None = None,
    scheduler_config: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    variant: str | None = None,
    class_labels: int | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
) -> LoadedModel:
    """Load a pixel-space diffusers ``UNet2DModel`` (DDPM CIFAR10, LSUN, ...).

    Args:
        path / checkpoint / weights_dir: the model directory: either a UNet directory (``config.json`` +
            weights, with ``scheduler_config.json`` next to them, as ``google/ddpm-cifar10-32``) or a
            pipeline directory with ``unet/`` and ``scheduler/`` subfolders.
        subfolder: the UNet's subfolder (default ``unet`` when it exists).
        scheduler_config: explicit path of the scheduler config JSON (default: found next to the UNet).
        class_labels: default class of a class-conditional UNet (``num_class_embeds``) when none is given.
        null_class: the label a class-conditional UNet was trained with as "unconditional", if any
            (enables classifier-free guidance with ``guidance_scale``).
    """
    require_zoo_extra("diffusers UNet models")
    torch_dtype = _dtype(dtype)
    dev = resolve_device(device)
    root = resolve_weights_path(
        path, checkpoint, weights_dir, "diffusers UNet2DModel directory", "ddpm", want_dir=True
    )
    if subfolder is None and (root / "unet" / "config.json").is_file():
        subfolder = "unet"
    unet_dir = root / subfolder if subfolder else root
    if not (unet_dir / "config.json").is_file():
        raise MissingModelError(f"no UNet config.json in {str(unet_dir)!r}; is this a diffusers UNet2DModel directory?")
    if scheduler_config is not None:
        sched_path = Path(scheduler_config).expanduser()
    else:
        cands = [root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                 unet_dir / "scheduler_config.json"]
        sched_path = next((c for c in cands if c.is_file()), cands[0])
    sched_cfg = _read_json(sched_path, "scheduler config (the training betas)")

    from ld3.utils.extras import require

    UNet2DModel = require("diffusers", "zoo", "diffusers UNet models").UNet2DModel

    unet = UNet2DModel.from_pretrained(
        root, subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True, variant=variant
    )
    unet = unet.to(dev).eval().requires_grad_(False)
    n_cls = unet.config.num_class_embeds
    num_classes = int(n_cls) if n_cls else None
    for opt, val in (("class_labels", class_labels), ("null_class", null_class)):
        if val is not None and (num_classes is None or not 0 <= int(val) < num_classes):
            raise ValueError(
                f"{opt}={val!r} is invalid: the UNet has "
                + (f"classes 0..{num_classes - 1}" if num_classes else "no class conditioning")
            )
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = int(unet.config.in_channels)
    out_c = int(unet.config.out_channels)
    if out_c not in (c, 2 * c):
        raise ValueError(f"UNet out_channels={out_c} must equal in_channels={c} (or twice it, learned variance)")

    network = ClassUNet(unet, num_classes, class_labels)

    def cond_process_fn(labels: Any) -> torch.Tensor:
        """Integer labels -> a long tensor on the UNet's current device."""
        return torch.as_tensor(labels).long().to(next(network.unet.parameters()).device)

    return LoadedModel(
        name="diffusers_unet",
        noise_schedule=schedule_from_scheduler_config(sched_cfg),
        network=network,
        model_type=model_type_from_scheduler_config(sched_cfg),
        shape=(c, int(h), int(w)),
        num_classes=num_classes,
        null_class=null_class,
        cond_process_fn=cond_process_fn if num_classes else None,
        default_guidance="classifier-free" if null_class is not None else "uncond",
        default_guidance_scale=float(guidance_scale),
        metadata={
            "path": str(unet_dir),
            "scheduler_config": dict(sched_cfg),
            "prediction_type": sched_cfg.get("prediction_type", "epsilon"),
            "learned_variance": out_c == 2 * c,
            "dtype": dtype,
            "device": str(dev),
        },
    )


__all__ = [
    "BETA_SCHEDULES",
    "betas_from_scheduler_config",
    "schedule_from_scheduler_config",
    "model_type_from_scheduler_config",
    "PromptEncoder",
    "TextUNet",
    "ClassUNet",
    "load_stable_diffusion",
    "load_diffusers_unet",
]
