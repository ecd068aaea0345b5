"""The ``stable_diffusion`` and ``diffusers_unet`` zoo loaders on tiny random models written in the same
on-disk formats as the real ones (diffusers ``save_pretrained`` layouts, CLIP tokenizer vocab/merges files).

Expected values come from calling the diffusers/transformers modules directly, not through ld3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ld3.models.zoo import load_model

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _sd_fixtures import MAX_LEN, SD_SCHEDULER, write_tiny_sd_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline directory (diffusers layout) in a weights cache."""
    return write_tiny_sd_pipeline(tmp_path_factory.mktemp("weights") / "tiny-sd")


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_model("stable_diffusion", checkpoint=sd_dir.name, weights_dir=sd_dir.parent, device="cpu")


def _direct_embeddings(m, prompts):
    """CLIP embeddings computed here with the raw tokenizer and text encoder."""
    ids = m.network.tokenizer(prompts, padding="max_length", max_length=MAX_LEN, truncation=True,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        return m.network.text_encoder(ids).last_hidden_state


def test_sd_schedule_shape_and_metadata(sd):
    from diffusers import DDPMScheduler

    assert sd.model_type == "noise" and sd.default_guidance == "classifier-free"
    assert sd.default_guidance_scale == 7.5
    assert sd.shape == (4, 8, 8)  # latent (C, H/f, W/f); here f = 2 (two VAE blocks), H = 16
    assert sd.metadata["height"] == 16 and sd.metadata["vae_scale_factor"] == 2
    ns = sd.noise_schedule
    assert ns.kind == "vp_discrete" and ns.total_N == 1000
    ref = DDPMScheduler.from_config(SD_SCHEDULER).alphas_cumprod.double()  # diffusers' own float32 table
    ours = torch.exp(2 * ns.log_alpha_array)
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=0)


def test_sd_cfg_matches_direct_unet_calls(sd):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.7, 0.2])
    prompts, empty = ["a cat", "dog!"], ["", ""]
    eps = sd.model_fn(guidance_scale=7.5, condition=prompts, unconditional_condition=empty)(x, t)

    unet = sd.network.unet
    t_in = (t - 1.0 / 1000) * 1000  # discrete-time input, DPM-Solver convention
    with torch.no_grad():
        eps_c = unet(x, t_in, encoder_hidden_states=_direct_embeddings(sd, prompts)).sample
        eps_u = unet(x, t_in, encoder_hidden_states=_direct_embeddings(sd, empty)).sample
    expected = eps_u + 7.5 * (eps_c - eps_u)
    assert (eps_c - eps_u).abs().max() > 1e-3  # the prompts matter, so the check below is not vacuous
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)
    # precomputed embeddings (as stored in teacher data) give the same result
    eps_tensor = sd.model_fn(condition=_direct_embeddings(sd, prompts), unconditional_condition=_direct_embeddings(
        sd, empty))(x, t)
    torch.testing.assert_close(eps_tensor, expected, rtol=1e-4, atol=1e-5)
    # unconditional = the empty prompt
    torch.testing.assert_close(sd.model_fn(guidance_type="uncond")(x, t), eps_u, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one prompt per"):
        sd.model_fn(condition=["a", "b", "c"], unconditional_condition=["", "", ""])(x, t)
    with pytest.raises(ValueError, match="prompt string"):
        sd.model_fn(condition=[1, 2], unconditional_condition=empty)(x, t)


def test_sd_two_step_ddim_and_decode(sd):
    from ld3.solvers import get_solver

    ns = sd.noise_schedule
    solver = get_solver("ddim", ns)
    timesteps = torch.linspace(ns.T, ns.eps, solver.num_timesteps(2), dtype=torch.float64)
    torch.manual_seed(0)
    x_T = torch.randn(2, *sd.shape)
    model_fn = sd.model_fn(condition=["a cat", "dog"], unconditional_condition=["", ""])
    with torch.no_grad():
        x0 = solver.sample(model_fn, x_T, timesteps)
        img = sd.to_pixels(x0)
        direct = sd.network.vae.decode(x0 / 0.18215).sample
    assert x0.shape == x_T.shape and torch.isfinite(x0).all()
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    torch.testing.assert_close(img, direct)


def test_sd_v_prediction_from_scheduler_config(sd_dir, tmp_path):
    vdir = tmp_path / "tiny-sd-v"
    shutil.copytree(sd_dir, vdir)
    cfg = dict(SD_SCHEDULER, prediction_type="v_prediction")
    (vdir / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    m = load_model("stable_diffusion", path=vdir, device="cpu", height=32, width=16)
    assert m.model_type == "v" and m.shape == (4, 16, 8)
    x = torch.randn(1, *m.shape)
    t = torch.tensor([0.5])
    with torch.no_grad():
        v = m.network.unet(x, (t - 1e-3) * 1000, encoder_hidden_states=_direct_embeddings(m, [""])).sample
    a, s = m.noise_schedule.marginal_alpha(t).float(), m.noise_schedule.marginal_std(t).float()
    torch.testing.assert_close(m.model_fn(guidance_type="uncond")(x, t), a * v + s * x, rtol=1e-4, atol=1e-5)


def test_sd_missing_and_incomplete_model_errors(sd_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_model("stable_diffusion", checkpoint="stable-diffusion-v1-5", weights_dir=tmp_path, device="cpu")
    assert str(tmp_path / "stable-diffusion-v1-5") in str(err.value)
    assert "scripts/download_model.sh sd" in str(err.value)
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(FileNotFoundError, match=r"missing \['text_encoder'\]"):
        load_model("stable_diffusion", path=broken, device="cpu")
    single = tmp_path / "sd-v1-4.ckpt"
    single.write_bytes(b"")
    with pytest.raises(ValueError, match="single_file_config"):
        load_model("stable_diffusion", path=single, device="cpu")
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model("stable_diffusion", path=sd_dir, device="cpu", dtype="float8")


# ----------------------------------------------------------------------------------- diffusers_unet
def _save_unet2d(folder: Path, **kw) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(1)
    UNet2DModel(
        sample_size=8, in_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw,
    ).save_pretrained(folder)
    # google/ddpm-cifar10-32 layout: the scheduler config sits next to the UNet's config.json
    DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear").save_pretrained(folder)


def test_diffusers_unet_uncond(tmp_path):
    from diffusers import DDPMScheduler

    _save_unet2d(tmp_path / "ddpm-tiny", out_channels=3)
    m = load_model("diffusers_unet", checkpoint="ddpm-tiny", weights_dir=tmp_path, device="cpu")
    assert m.shape == (3, 8, 8) and m.model_type == "noise" and m.num_classes is None
    ref = DDPMScheduler.from_pretrained(tmp_path / "ddpm-tiny").alphas_cumprod.double()
    torch.testing.assert_close(torch.exp(2 * m.noise_schedule.log_alpha_array), ref, rtol=2e-6, atol=0)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.9, 0.05])
    with torch.no_grad():
        direct = m.network.unet(x, (t - 1e-3) * 1000).sample
    torch.testing.assert_close(m.model_fn()(x, t), direct)


def test_diffusers_unet_class_conditional_learned_variance_pipeline_layout(tmp_path):
    _save_unet2d(tmp_path / "pipe" / "unet", out_channels=6, num_class_embeds=4)
    (tmp_path / "pipe" / "scheduler").mkdir()  # DDPMPipeline layout: unet/ and scheduler/
    pipe = tmp_path / "pipe"
    (pipe / "unet" / "scheduler_config.json").rename(pipe / "scheduler" / "scheduler_config.json")
    m = load_model("diffusers_unet", path=tmp_path / "pipe", device="cpu")
    assert m.num_classes == 4 and m.metadata["learned_variance"]
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 0.5])
    labels = torch.tensor([3, 0])
    with torch.no_grad():
        direct = m.network.unet(x, (t - 1e-3) * 1000, class_labels=labels).sample[:, :3]
    torch.testing.assert_close(m.model_fn(condition=labels)(x, t), direct)
    with pytest.raises(ValueError, match="class-conditional"):
        m.model_fn()(x, t)
    with pytest.raises(ValueError, match="null_class=4 is invalid"):
        load_model("diffusers_unet", path=tmp_path / "pipe", device="cpu", null_class=4)


def test_diffusers_unet_missing_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_model("diffusers_unet", checkpoint="ddpm-cifar10-32", weights_dir=tmp_path, device="cpu")
    assert "ddpm-cifar10-32" in str(err.value) and "scripts/download_model.sh ddpm" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model("diffusers_unet", path=tmp_path / "empty", device="cpu")


def test_beta_schedules_match_diffusers():
    from diffusers import DDPMScheduler

    from ld3.models.zoo.diffusers_models import betas_from_scheduler_config

    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"):
        cfg = {"beta_schedule": kind, "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
        ref = DDPMScheduler.from_config(cfg).betas.double()
        torch.testing.assert_close(betas_from_scheduler_config(cfg), ref, rtol=1e-5, atol=1e-7, msg=kind)
    with pytest.raises(ValueError, match="beta_schedule='cubic'"):
        betas_from_scheduler_config({"beta_schedule": "cubic"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        betas_from_scheduler_config({"rescale_betas_zero_snr": True})


@pytest.mark.gpu
def test_sd_network_to_cuda_moves_whole_model(sd_dir):
    """gen_data moves ``LoadedModel.network`` after loading: VAE, text encoder and prompts must follow."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m = load_model("stable_diffusion", path=sd_dir, device="cpu")
    m.network.to("cuda")
    x = torch.randn(2, *m.shape, device="cuda")
    t = torch.full((2,), 0.5, device="cuda")
    eps = m.model_fn(condition=["a cat", "dog"], unconditional_condition=["", ""])(x, t)
    img = m.to_pixels(x)
    assert eps.device.type == "cuda" and img.device.type == "cuda"
    assert torch.isfinite(eps).all() and torch.isfinite(img).all()
    m16 = load_model("stable_diffusion", path=sd_dir, device="cuda", dtype="float16")
    eps16 = m16.model_fn(condition=["a cat", "dog"], unconditional_condition=["", ""])(x, t)
    assert eps16.dtype == torch.float32 and torch.isfinite(eps16).all()
