"""Stable Diffusion from one CompVis-layout file (``.safetensors`` / ``.ckpt``) against the original LDM code.

Reference data (``tests/data/ldm_tiny_*``, entry ``sd``) were produced once, outside this repository, by
running the ORIGINAL github CompVis/latent-diffusion code: ``openaimodel.UNetModel`` with the Stable
Diffusion v1 layout (spatial transformer, ``legacy=False``, ``use_checkpoint``) at a tiny size and the
KL first stage (``ldm.modules.diffusionmodules.model.Decoder`` + ``post_quant_conv``), loaded with
``zoo_fill`` values under their checkpoint names (``model.diffusion_model.*``, ``first_stage_model.*``),
evaluated on x ~ N(0, 1), t = [3, 517.5], a random context (B, 5, 32), and decoding
``decode_first_stage(z) = decoder(post_quant_conv(z / 0.18215))``. The CLIP text encoder
(``cond_stage_model.transformer.*``) is checked against transformers' ``CLIPTextModel`` loaded directly.

The test writes the single file in the CompVis layout and a local config directory in the diffusers
layout, then loads through ``load_model("stable_diffusion", path=..., single_file_config=...)`` (diffusers'
own key conversion, no network).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from zoo_fill import filled_state_dict

from ld3.models.zoo import load_model
from ld3.models.zoo._checkpoint import CorruptModelError

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _sd_fixtures import MAX_LEN, SD_SCHEDULER, write_clip_tokenizer  # noqa: E402

DATA = Path(__file__).parent / "data"
TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1,
            max_position_embeddings=MAX_LEN, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT))


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    d = tmp_path_factory.mktemp("sd_single")
    cfg = d / "configs"
    # the diffusers configs that describe the tiny original architecture (ldm_tiny_manifest.json, "sd")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2,
    ).save_config(cfg / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
        scaling_factor=0.18215,
    ).save_config(cfg / "vae")
    CLIPTextConfig(**TEXT).save_pretrained(cfg / "text_encoder")
    write_clip_tokenizer(cfg / "tokenizer")
    (cfg / "scheduler").mkdir()
    (cfg / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER))

    man = json.loads((DATA / "ldm_tiny_manifest.json").read_text())["sd"]
    ref = load_file(str(DATA / "ldm_tiny_reference.safetensors"))
    state = filled_state_dict(man["params"].items())
    # the released layout (transformers 4.x names under FrozenCLIPEmbedder's "transformer")
    text_names = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): tuple(v.shape)
                  for k, v in _text_encoder().state_dict().items() if not k.endswith("position_ids")}
    state.update(filled_state_dict(text_names.items()))
    betas = ref["sd.betas"]
    state.update(betas=betas.float(), alphas_cumprod=torch.cumprod(1 - betas, 0).float())  # LatentDiffusion buffers
    save_file(state, d / "tiny-sd.safetensors")
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 6}, d / "tiny-sd.ckpt")
    return d


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_reproduces_original_ldm_code(sd_files, suffix):
    ref = load_file(str(DATA / "ldm_tiny_reference.safetensors"))
    m = load_model("stable_diffusion", path=sd_files / f"tiny-sd{suffix}", single_file_config=sd_files / "configs",
                   device="cpu")
    assert m.shape == (4, 8, 8) and m.default_guidance == "classifier-free"
    with torch.no_grad():
        eps = m.network(ref["sd.x"], ref["sd.t"], ref["sd.context"])
        pixels = m.to_pixels(ref["sd.z"])
    torch.testing.assert_close(eps, ref["sd.unet_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pixels, ref["sd.pixels"], atol=1e-4, rtol=1e-4)
    # the scheduler's scaled_linear betas equal the checkpoint's LDM "linear" (sqrt-linear) betas
    torch.testing.assert_close(torch.exp(2 * m.noise_schedule.log_alpha_array), torch.cumprod(1 - ref["sd.betas"], 0),
                               atol=1e-12, rtol=1e-9)

    # CLIP text encoder: the checkpoint's cond_stage_model.transformer.* weights under transformers' names
    direct = _text_encoder()
    level = any(k.startswith("text_model.") for k in direct.state_dict())
    prefix = "cond_stage_model.transformer." + ("" if level else "text_model.")
    state = {k[len(prefix):]: v for k, v in load_file(str(sd_files / "tiny-sd.safetensors")).items()
             if k.startswith(prefix)}
    missing, unexpected = direct.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    ids = m.network.tokenizer(["a cat", ""], padding="max_length", max_length=MAX_LEN, truncation=True,
                              return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(m.cond_process_fn(["a cat", ""]), direct(ids).last_hidden_state)


def test_single_file_errors(sd_files, tmp_path):
    cfg = sd_files / "configs"
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((sd_files / "tiny-sd.safetensors").read_bytes()[:5000])
    with pytest.raises(CorruptModelError, match=r"trunc\.safetensors.*download_model\.sh sd"):
        load_model("stable_diffusion", path=trunc, single_file_config=cfg, device="cpu")
    trunc_ckpt = tmp_path / "trunc.ckpt"
    trunc_ckpt.write_bytes((sd_files / "tiny-sd.ckpt").read_bytes()[:5000])
    with pytest.raises(CorruptModelError, match=r"trunc\.ckpt.*download_model\.sh sd"):
        load_model("stable_diffusion", path=trunc_ckpt, single_file_config=cfg, device="cpu")
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, other)
    with pytest.raises(CorruptModelError, match="model.diffusion_model"):
        load_model("stable_diffusion", path=other, single_file_config=cfg, device="cpu")
    with pytest.raises(CorruptModelError, match=r"tiny-sd\.ckpt.*sha256.*download_model\.sh sd"):
        load_model("stable_diffusion", path=sd_files / "tiny-sd.ckpt", single_file_config=cfg, sha256="deadbeef00",
                   device="cpu")
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_model("stable_diffusion", path=sd_files / "tiny-sd.ckpt", single_file_config=tmp_path, device="cpu")


def test_full_size_v1_names_and_shapes_convert_to_the_diffusers_models():
    """``sd_v1_release_manifest.json``: names / shapes of a Stable Diffusion v1 CompVis checkpoint, from the
    original latent-diffusion modules built (meta device) with ``v1-inference.yaml`` of github
    CompVis/stable-diffusion, plus transformers' CLIP ViT-L/14 text model under ``cond_stage_model.transformer.
    text_model.*``. They convert exactly onto the diffusers SD v1 U-Net / VAE (the published v1-5 configs) and
    the CLIP text model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
    from transformers import CLIPTextConfig, CLIPTextModel

    from ld3.models.zoo.diffusers_models import sd_text_encoder_state

    man = json.loads((DATA / "sd_v1_release_manifest.json").read_text())
    ck = {k: torch.empty(s, device="meta") for k, s in man.items()}
    unet_cfg = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae_cfg = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                   layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    for cls, cfg in ((UNet2DConditionModel, unet_cfg), (AutoencoderKL, vae_cfg)):
        with torch.device("meta"):
            model = cls(**cfg)
        conv = SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]["checkpoint_mapping_fn"](checkpoint=dict(ck),
                                                                                   config=dict(model.config))
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in conv.items()} == want
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    own = clip.state_dict()
    sub = sd_text_encoder_state(ck, own)
    assert {k: tuple(v.shape) for k, v in sub.items()} == {k: tuple(v.shape) for k, v in own.items()}
