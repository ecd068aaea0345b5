"""The ``adm`` zoo loader against the original guided-diffusion code.

Reference data (``tests/data/adm_*``) were produced once, outside this repository, by running the
ORIGINAL github openai/guided-diffusion code (snapshot of its default branch, ``guided_diffusion/unet.py``,
``script_util.py``, ``gaussian_diffusion.py``) with torch on CPU:

* ``adm_release_manifest.json``: ``{name: shape}`` of ``state_dict()`` of ``create_model`` /
  ``create_classifier`` built on the meta device with the README flags of ``64x64_diffusion.pt``,
  ``256x256_diffusion.pt``, ``256x256_diffusion_uncond.pt``, ``64x64_classifier.pt`` (depth 4) and
  ``256x256_classifier.pt`` (depth 2): the parameter names and shapes of the released files.
* ``adm_tiny_manifest.json``: three tiny instances (the original ``UNetModel`` / ``EncoderUNetModel``
  constructor kwargs and their state-dict names and shapes): a class-conditional U-Net with the new
  attention order, scale-shift norm and resblock up/down (as the 64x64 release), an unconditional one
  with legacy attention order and conv resampling, and an attention-pool classifier.
* ``adm_tiny_reference.safetensors``: the original networks loaded with ``zoo_fill.filled_state_dict``
  (deterministic values, see tests/zoo_fill.py) evaluated on x ~ N(0, 1) (torch.Generator seed 0,
  shape (2, 3, 8, 8)), t = [3, 517.5], y = [1, 7]: U-Net outputs (all 6 channels) and classifier logits;
  ``get_named_beta_schedule('cosine' / 'linear', 1000)``; and ``GaussianDiffusion.p_mean_variance``
  (cosine, learned range, clip_denoised=False) followed by ``condition_score`` with the
  ``classifier_sample.py`` cond_fn at classifier scale 1.5 for steps k = [10, 600]: the
  classifier-guided x0 prediction (``guided_x0``) and the unguided one (``plain_x0``).

The tests write the tiny instances as guided-diffusion ``.pt`` state dicts (``torch.save`` of the plain
name -> tensor dict, as the released files) and load them through ``load_model("adm", ...)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from zoo_fill import filled_state_dict

from ld3.models.adm_nets import ADMEncoderClassifier, ADMUNet
from ld3.models.zoo import load_model
from ld3.models.zoo._checkpoint import CorruptModelError
from ld3.models.zoo._weights import MissingModelError
from ld3.models.zoo.adm import ADM_RELEASES, adm_betas

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny():
    return json.loads((DATA / "adm_tiny_manifest.json").read_text())


@pytest.fixture(scope="module")
def ref():
    return load_file(str(DATA / "adm_tiny_reference.safetensors"))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("adm")
    for name, spec in tiny.items():
        torch.save(filled_state_dict(spec["params"].items()), d / f"{name}.pt")
    return d


def _load_cond(files, tiny, **kw):
    return load_model("adm", path=files / "unet_cond.pt", classifier_path=files / "classifier.pt",
                      architecture=tiny["unet_cond"]["config"], classifier_architecture=tiny["classifier"]["config"],
                      beta_schedule="cosine", device="cpu", **kw)


def test_tiny_instances_reproduce_guided_diffusion(files, tiny, ref):
    m = _load_cond(files, tiny)
    assert m.model_type == "noise" and m.shape == (3, 8, 8) and m.num_classes == 10
    assert m.default_guidance == "classifier" and m.metadata["learned_variance"]
    with torch.no_grad():
        eps = m.network(ref["x"], ref["t"], ref["y"])
        logits = m.network.classifier(ref["x"], ref["t"])
    # the eps half of the learned-variance output
    torch.testing.assert_close(eps, ref["unet_cond_out"][:, :3], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref["classifier_logits"], atol=2e-5, rtol=1e-5)
    logp = m.classifier(ref["x"], ref["t"], ref["y"])
    torch.testing.assert_close(logp, torch.log_softmax(ref["classifier_logits"], -1)[[0, 1], ref["y"]], atol=2e-5,
                               rtol=1e-5)

    u = load_model("adm", path=files / "unet_uncond.pt", architecture=tiny["unet_uncond"]["config"],
                   beta_schedule="linear", device="cpu")
    assert u.num_classes is None and u.default_guidance == "uncond"
    with torch.no_grad():
        torch.testing.assert_close(u.network(ref["x"], ref["t"]), ref["unet_uncond_out"][:, :3], atol=2e-5, rtol=1e-5)


def test_classifier_guidance_matches_condition_score(files, tiny, ref):
    m = _load_cond(files, tiny)
    k = ref["guided_k"]
    t = ((k.double() + 1) / 1000).float()  # DPM-Solver's convention: network input k at t = (k + 1) / N
    ns = m.noise_schedule
    a = ns.marginal_alpha(t)[:, None, None, None].float()
    s = ns.marginal_std(t)[:, None, None, None].float()
    x = ref["x"]
    scale = float(ref["guidance_scale"])
    guided = m.model_fn(guidance_type="classifier", guidance_scale=scale, condition=ref["y"])
    plain = m.model_fn(guidance_type="uncond", condition=ref["y"])
    x0_guided = (x - s * guided(x, t)) / a
    x0_plain = (x - s * plain(x, t).detach()) / a
    torch.testing.assert_close(x0_plain, ref["plain_x0"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_guided, ref["guided_x0"], atol=1e-4, rtol=1e-4)
    assert (ref["guided_x0"] - ref["plain_x0"]).abs().max() > 50 * 1e-4  # the guidance term is resolved


def test_beta_schedules_match_guided_diffusion(ref):
    torch.testing.assert_close(adm_betas("cosine"), ref["betas_cosine"], atol=1e-15, rtol=0)
    torch.testing.assert_close(adm_betas("linear"), ref["betas_linear"], atol=1e-15, rtol=0)
    assert ADM_RELEASES["imagenet64_cond"].beta_schedule == "cosine"
    assert ADM_RELEASES["imagenet256_cond"].beta_schedule == "linear"


@pytest.mark.parametrize(
    "variant,unet_key,clf_key",
    [("imagenet64_cond", "64x64_diffusion", "64x64_classifier"),
     ("imagenet256_cond", "256x256_diffusion", "256x256_classifier"),
     ("imagenet256_uncond", "256x256_diffusion_uncond", "256x256_classifier")],
)
def test_release_parameter_names_and_shapes(variant, unet_key, clf_key):
    manifest = json.loads((DATA / "adm_release_manifest.json").read_text())
    rel = ADM_RELEASES[variant]
    with torch.device("meta"):
        unet = ADMUNet(**rel.unet)
        clf = ADMEncoderClassifier(**rel.classifier)
    assert {k: list(v.shape) for k, v in unet.state_dict().items()} == manifest[unet_key]
    assert {k: list(v.shape) for k, v in clf.state_dict().items()} == manifest[clf_key]
    assert rel.checkpoint == f"{unet_key}.pt" and rel.classifier_checkpoint == f"{clf_key}.pt"


def test_missing_truncated_and_wrong_checksum_files_fail_early(files, tiny, tmp_path):
    with pytest.raises(MissingModelError, match=r"64x64_diffusion\.pt.*download_model\.sh adm"):
        load_model("adm", checkpoint="64x64_diffusion.pt", weights_dir=tmp_path)
    with pytest.raises(MissingModelError, match=r"nope\.pt.*download_model\.sh adm"):
        load_model("adm", path=files / "unet_cond.pt", classifier_path=tmp_path / "nope.pt",
                   architecture=tiny["unet_cond"]["config"], beta_schedule="cosine")
    data = (files / "unet_cond.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match=r"trunc\.pt.*download_model\.sh adm"):
        load_model("adm", path=trunc, architecture=tiny["unet_cond"]["config"], beta_schedule="cosine")
    with pytest.raises(CorruptModelError, match=r"unet_cond\.pt.*sha256.*download_model\.sh adm"):
        load_model("adm", path=files / "unet_cond.pt", architecture=tiny["unet_cond"]["config"],
                   beta_schedule="cosine", sha256="0123456789abcdef")
    # a file of another architecture: the strict load names what does not match
    uncond_arch = dict(tiny["unet_cond"]["config"], num_classes=None)
    with pytest.raises(CorruptModelError, match=r"unet_cond\.pt.*1 unexpected keys: label_emb\.weight"):
        load_model("adm", path=files / "unet_cond.pt", architecture=uncond_arch, beta_schedule="cosine")


def test_bad_options_are_refused(files, tiny):
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['colour'\]"):
        load_model("adm", path=files / "unet_cond.pt", colour="red")
    with pytest.raises(ValueError, match="variant='imagenet1k'.*allowed"):
        load_model("adm", path=files / "unet_cond.pt", variant="imagenet1k")
    with pytest.raises(ValueError, match="set options.variant"):
        load_model("adm", path=files / "unet_cond.pt")
    with pytest.raises(ValueError, match="beta_schedule='quadratic'"):
        load_model("adm", path=files / "unet_cond.pt", architecture=tiny["unet_cond"]["config"],
                   beta_schedule="quadratic")


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['LD3_PWNED']).write_text('x')",))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, monkeypatch, tiny):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LD3_PWNED", str(marker))
    bad = tmp_path / "evil.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "x": _Payload()}, bad)
    with pytest.raises(CorruptModelError, match="weights_only=True"):
        load_model("adm", path=bad, architecture=tiny["unet_cond"]["config"], beta_schedule="cosine")
    assert not marker.exists()


def test_one_call_moves_unet_and_classifier(files, tiny):
    m = _load_cond(files, tiny)
    m.network.to(torch.float64)
    assert {p.dtype for p in m.network.parameters()} == {torch.float64}
    assert m.network.classifier is not None and next(m.network.classifier.parameters()).dtype == torch.float64


def test_unconditional_unet_with_classifier_guidance(files, tiny, ref):
    """256x256_diffusion_uncond + classifier: the labels reach only the classifier (README: scale 10)."""
    m = load_model("adm", path=files / "unet_uncond.pt", classifier_path=files / "classifier.pt",
                   architecture=tiny["unet_uncond"]["config"], classifier_architecture=tiny["classifier"]["config"],
                   beta_schedule="linear", device="cpu", guidance_scale=10.0)
    assert m.default_guidance == "classifier" and m.num_classes == 10 and not m.metadata["class_conditional"]
    x, y = ref["x"], ref["y"]
    t = torch.tensor([0.3, 0.8])
    eps = m.model_fn(condition=y)(x, t)
    t_in = (t - 1e-3) * 1000
    xg = x.clone().requires_grad_(True)
    logp = torch.log_softmax(m.network.classifier(xg, t_in), -1)
    (grad,) = torch.autograd.grad(logp[[0, 1], y].sum(), xg)
    sigma = m.noise_schedule.marginal_std(t)[:, None, None, None].float()
    with torch.no_grad():
        expected = m.network(x, t_in) - 10.0 * sigma * grad
    torch.testing.assert_close(eps, expected, atol=1e-5, rtol=1e-5)


def test_float16_networks_stay_close_to_the_reference(files, tiny, ref):
    """dtype=float16 (the release's use_fp16): GroupNorm and softmax in float32, outputs in the caller's dtype."""
    m = _load_cond(files, tiny, dtype="float16")
    assert {p.dtype for p in m.network.parameters()} == {torch.float16}
    with torch.no_grad():
        eps = m.network(ref["x"], ref["t"], ref["y"])
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, ref["unet_cond_out"][:, :3], atol=2e-2, rtol=2e-2)
    guided = m.model_fn(condition=ref["y"])(ref["x"], torch.tensor([0.3, 0.8]))
    assert guided.dtype == torch.float32 and torch.isfinite(guided).all()
