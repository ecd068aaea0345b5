"""A tiny Stable Diffusion pipeline directory in the real release's on-disk layout (diffusers'
``save_pretrained``: unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json), shared by
tests/test_zoo_diffusers.py (the zoo loader), tests/test_integrations_diffusers.py (LD3Scheduler inside
diffusers' pipelines) and tests/test_zoo_sd_single_file.py (the tokenizer and scheduler config).

Needs diffusers and transformers (the ``zoo`` extra): callers ``importorskip`` them first.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SD_SCHEDULER = {  # the real stable-diffusion-v1-5 scheduler/scheduler_config.json, values as published
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
MAX_LEN = 12  # tokenizer model_max_length (77 in the real model)


def write_clip_tokenizer(folder: Path) -> None:
    """A tiny byte-level BPE vocabulary in CLIP's file format (vocab.json + merges.txt + configs)."""
    folder.mkdir(parents=True)
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>", "!"] + letters + [c + "</w>" for c in letters]
    vocab += ["ca", "cat</w>", "do", "dog</w>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LEN, "do_lower_case": True, **special}))


def write_tiny_sd_pipeline(root: Path) -> Path:
    """Write a tiny random SD pipeline (seeded: the same weights every call) to ``root``; returns ``root``."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=MAX_LEN, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    write_clip_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }))
    return root
