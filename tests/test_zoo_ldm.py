"""The ``ldm`` zoo loader (CompVis latent diffusion: LSUN bedroom / church, cin256) against the original code.

Reference data (``tests/data/ldm_*``) were produced once, outside this repository, by running the ORIGINAL
github CompVis/latent-diffusion code (snapshot of its default branch; ``openaimodel.UNetModel``,
``ldm.modules.diffusionmodules.model.Encoder`` / ``Decoder``, ``make_beta_schedule``) with torch on CPU:

* ``ldm_release_manifest.json``: ``{name: shape}`` of the U-Net (``model.diffusion_model.*``), the first
  stage (``first_stage_model.*``: Encoder, Decoder, quant convs and, for VQ, the codebook
  ``quantize.embedding``, laid out as ``VQModel`` / ``AutoencoderKL`` of ``ldm/models/autoencoder.py``) and
  the class embedder (``cond_stage_model.embedding``) built on the meta device from
  ``configs/latent-diffusion/{lsun_bedrooms-ldm-vq-4, lsun_churches-ldm-kl-8, cin256-v2}.yaml``.
* ``ldm_tiny_manifest.json``: tiny configs in the original YAML structure (one per family: VQ + legacy
  attention heads; KL + scale-shift norm + resblock up/down + scale_by_std; VQ + spatial transformer +
  ClassEmbedder) and their checkpoint names / shapes.
* ``ldm_tiny_reference.safetensors``: those networks loaded with ``zoo_fill`` values, evaluated on
  x ~ N(0, 1) (torch.Generator seed 0), t = [3, 517.5] (labels [3, 10] for cin256, 10 = its null class):
  U-Net outputs; ``decode_first_stage(z) = first_stage.decode(z / scale_factor)`` of z ~ N(0, 1) (VQ:
  nearest codebook entry as taming's ``VectorQuantizer2``, then ``post_quant_conv`` and ``Decoder``);
  the ``make_beta_schedule('linear', ...)`` betas; scale_factor 0.5 for the scale_by_std model.

The tests write CompVis ``model.ckpt`` files (``{"state_dict": ..., "global_step", "callbacks":
{ModelCheckpoint: ...}}`` as Lightning saves them) with the tiny config as ``config.yaml`` next to them.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from zoo_fill import filled_state_dict

from ld3.models.adm_nets import ADMUNet
from ld3.models.zoo import load_model
from ld3.models.zoo._checkpoint import CorruptModelError
from ld3.models.zoo._compvis_vae import convert_state_dict, diffusers_config
from ld3.models.zoo._weights import MissingModelError
from ld3.models.zoo.ldm import LDM_VARIANTS, ldm_betas, unet_kwargs

pytest.importorskip("diffusers")
DATA = Path(__file__).parent / "data"
VARIANTS = ("lsun_bedroom", "lsun_church", "cin256")


def _lightning_metadata():
    """A ``callbacks`` entry keyed by Lightning's ModelCheckpoint class, pickled by reference (no Lightning here)."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    mod = types.ModuleType(name)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = name, "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    return name, mod, {ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "best_model_path": "last.ckpt"}}


def write_tiny_ldm_checkpoint(directory: Path, variant: str) -> tuple:
    """Write ``<dir>/<variant>/model.ckpt`` + ``config.yaml``; returns (ckpt path, loader options)."""
    spec = json.loads((DATA / "ldm_tiny_manifest.json").read_text())[variant]
    ref = load_file(str(DATA / "ldm_tiny_reference.safetensors"))
    d = directory / variant
    d.mkdir(parents=True, exist_ok=True)
    state = filled_state_dict(spec["params"].items())
    betas = ref[f"{variant}.betas"]
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    if spec["config"]["model"]["params"].get("scale_by_std"):
        state["scale_factor"] = ref[f"{variant}.scale_factor"].clone()
    if variant == "lsun_bedroom":  # LitEma copies (use_ema defaults to True in LatentDiffusion)
        for k, v in list(state.items()):
            if k.startswith("model.diffusion_model."):
                state["model_ema." + k[len("model."):].replace(".", "")] = v * 0.5
        state["model_ema.decay"] = torch.tensor(0.9999)
    name, mod, callbacks = _lightning_metadata()
    parents = [n for n in ("pytorch_lightning", "pytorch_lightning.callbacks") if n not in sys.modules]
    sys.modules[name] = mod
    for n in parents:
        sys.modules[n] = types.ModuleType(n)
    try:
        torch.save({"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.4.2", "state_dict": state,
                    "callbacks": callbacks}, d / "model.ckpt")
    finally:
        for n in [name, *parents]:
            sys.modules.pop(n, None)
    (d / "config.yaml").write_text(yaml.safe_dump(spec["config"]))
    return d / "model.ckpt", {}


@pytest.fixture(scope="module")
def ref():
    return load_file(str(DATA / "ldm_tiny_reference.safetensors"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ldm")
    return {v: write_tiny_ldm_checkpoint(d, v)[0] for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_checkpoints_reproduce_latent_diffusion(ckpts, ref, variant):
    m = load_model("ldm", path=ckpts[variant], device="cpu")
    x, t = ref[f"{variant}.x"], ref[f"{variant}.t"]
    assert m.shape == tuple(x.shape[1:]) and m.model_type == "noise"
    with torch.no_grad():
        eps = m.network(x, t, ref["cin256.y"]) if variant == "cin256" else m.network(x, t)
        pixels = m.to_pixels(ref[f"{variant}.z"])
    torch.testing.assert_close(eps, ref[f"{variant}.unet_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pixels, ref[f"{variant}.pixels"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.exp(2 * m.noise_schedule.log_alpha_array),
                               torch.cumprod(1 - ref[f"{variant}.betas"], 0), atol=1e-12, rtol=1e-9)
    assert m.metadata["scale_factor"] == pytest.approx(float(ref[f"{variant}.scale_factor"]))
    if variant == "cin256":
        assert m.default_guidance == "classifier-free" and m.default_guidance_scale == 2.0
        assert m.null_class == 10 and m.num_classes == 10
        fn = m.model_fn(condition=torch.tensor([3, 4]), unconditional_condition=torch.tensor([10, 10]))
        assert fn(x, torch.tensor([0.5, 0.2])).shape == x.shape
    else:
        assert m.default_guidance == "uncond" and m.null_class is None


def test_use_ema_takes_the_lit_ema_copy(ckpts, ref):
    m = load_model("ldm", path=ckpts["lsun_bedroom"], device="cpu", use_ema=True)
    w = m.network.unet.input_blocks[0][0].weight
    plain = load_model("ldm", path=ckpts["lsun_bedroom"], device="cpu").network.unet.input_blocks[0][0].weight
    torch.testing.assert_close(w, plain * 0.5)
    with pytest.raises(CorruptModelError, match="model_ema"):
        load_model("ldm", path=ckpts["lsun_church"], device="cpu", use_ema=True)


def test_ldm_linear_betas_are_sqrt_linear(ref):
    torch.testing.assert_close(ldm_betas(0.0015, 0.0195, 1000), ref["lsun_bedroom.betas"], atol=1e-15, rtol=0)
    torch.testing.assert_close(ldm_betas(0.0015, 0.0155, 1000), ref["lsun_church.betas"], atol=1e-15, rtol=0)
    assert LDM_VARIANTS["lsun_church"]["model"]["params"]["linear_end"] == 0.0155


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_parameter_names_and_shapes(variant):
    """Our U-Net's names equal the release's; every first-stage tensor maps onto the diffusers model's."""
    from diffusers import AutoencoderKL, VQModel

    manifest = json.loads((DATA / "ldm_release_manifest.json").read_text())[variant]
    p = LDM_VARIANTS[variant]["model"]["params"]
    with torch.device("meta"):
        unet = ADMUNet(**unet_kwargs(p["unet_config"]["params"]))
    ours = {"model.diffusion_model." + k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == {k: v for k, v in manifest.items() if k.startswith("model.diffusion_model.")}

    fsp = p["first_stage_config"]["params"]
    kind = "vq" if "n_embed" in fsp else "kl"
    cfg = diffusers_config(kind, fsp["ddconfig"], fsp["embed_dim"], fsp.get("n_embed"))
    with torch.device("meta"):
        target = (VQModel if kind == "vq" else AutoencoderKL)(**cfg).state_dict()
        src = {k[len("first_stage_model."):]: torch.empty(s) for k, s in manifest.items()
               if k.startswith("first_stage_model.")}
    conv = convert_state_dict(src, len(cfg["block_out_channels"]), cfg["layers_per_block"])
    assert {k: tuple(v.shape) for k, v in conv.items()} == {k: tuple(v.shape) for k, v in target.items()}
    rest = {k for k in manifest if not k.startswith(("model.diffusion_model.", "first_stage_model."))}
    if variant == "cin256":
        assert rest == {"cond_stage_model.embedding.weight"}
        assert manifest["cond_stage_model.embedding.weight"] == [1001, 512]
    else:
        assert rest == set()


def test_errors_name_the_file_and_the_fix(ckpts, tmp_path):
    with pytest.raises(MissingModelError, match=r"lsun_bedrooms/model\.ckpt.*download_model\.sh ldm"):
        load_model("ldm", checkpoint="lsun_bedrooms/model.ckpt", weights_dir=tmp_path, variant="lsun_bedroom")
    with pytest.raises(ValueError, match=r"variant='lsun_cat'.*allowed"):
        load_model("ldm", path=ckpts["cin256"], variant="lsun_cat")
    bare = tmp_path / "bare" / "model.ckpt"
    bare.parent.mkdir()
    bare.write_bytes(ckpts["cin256"].read_bytes())
    with pytest.raises(ValueError, match="set options.variant"):
        load_model("ldm", path=bare)
    # the tiny cin256 file against the full-size released config: names / shapes do not match
    with pytest.raises(CorruptModelError, match=r"model\.ckpt.*Is variant cin256 the config"):
        load_model("ldm", path=bare, variant="cin256", device="cpu")
    # the church file with the bedroom config: the stored betas already disagree
    with pytest.raises(CorruptModelError, match="betas differ"):
        load_model("ldm", path=ckpts["lsun_church"], config=ckpts["lsun_bedroom"].parent / "config.yaml")
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(ckpts["lsun_bedroom"].read_bytes()[:4096])
    with pytest.raises(CorruptModelError, match=r"trunc\.ckpt.*download_model\.sh ldm"):
        load_model("ldm", path=trunc, config=ckpts["lsun_bedroom"].parent / "config.yaml")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['scale'\]"):
        load_model("ldm", path=ckpts["cin256"], scale=3.0)


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib, os; pathlib.Path(os.environ['LD3_PWNED']).write_text('x')",))


def test_planted_payload_is_refused_and_never_runs(ckpts, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LD3_PWNED", str(marker))
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.yaml").write_text((ckpts["lsun_bedroom"].parent / "config.yaml").read_text())
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": _Payload()}, d / "model.ckpt")
    with pytest.raises(CorruptModelError, match="builtins.exec"):
        load_model("ldm", path=d / "model.ckpt", device="cpu")
    assert not marker.exists()
