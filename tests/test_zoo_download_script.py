"""scripts/download_model.sh works offline for --help / --list / --dry-run, and the model configs that
point at downloaded weights resolve and fail with a clear error when the weights are absent."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ld3.models.zoo import load_model
from ld3.models.zoo.edm import EDM_CHECKPOINTS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_model.sh"
MODEL_CONFIGS = ["edm_cifar10", "edm_afhqv2", "edm_ffhq", "sd_v1_4", "sd_v1_5"]


def _run(*args: str, cache: Path, torch_home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD3_CACHE=str(cache), TORCH_HOME=str(torch_home))
    # no network is used by the modes tested here; an unroutable proxy makes sure of it
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_script_syntax_and_help(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    out = _run("--help", cache=tmp_path / "c", torch_home=tmp_path / "t")
    assert out.returncode == 0
    for group in ("edm", "fid-refs", "lpips", "inception", "sd", "ddpm", "--with-sd", "--list", "--dry-run"):
        assert group in out.stdout
    bad = _run("nonsense", cache=tmp_path / "c", torch_home=tmp_path / "t")
    assert bad.returncode == 2 and "unknown group 'nonsense'" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_list_names_every_file_the_code_expects(tmp_path):
    cache, th = tmp_path / "cache", tmp_path / "th"
    out = _run("--list", cache=cache, torch_home=th)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for fname in EDM_CHECKPOINTS.values():
        assert f"{cache}/weights/{fname}" in text
        assert f"https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/{fname}" in text
    for ref in ("cifar10-32x32", "afhqv2-64x64", "ffhq-64x64"):
        assert f"{cache}/fid-refs/{ref}.npz" in text
    from ld3.learners.losses import LPIPS_BACKBONE_FILES

    for fname in LPIPS_BACKBONE_FILES.values():
        assert f"{th}/hub/checkpoints/{fname}" in text and f"{cache}/weights/lpips/{fname}" in text
    from ld3.metrics.fid import INCEPTION_WEIGHTS

    assert f"{cache}/weights/{INCEPTION_WEIGHTS}" in text
    for d in ("stable-diffusion-v1-4", "stable-diffusion-v1-5", "ddpm-cifar10-32"):
        assert f"{cache}/weights/{d}/" in text
    assert not cache.exists() and not th.exists()  # --list writes nothing


def test_dry_run_skips_good_files_and_refetches_bad_ones(tmp_path):
    cache, th = tmp_path / "cache", tmp_path / "th"
    pkl = cache / "weights" / "edm-cifar10-32x32-uncond-vp.pkl"
    pkl.parent.mkdir(parents=True)
    pkl.write_bytes(b"pretend pickle")
    vgg = th / "hub" / "checkpoints" / "vgg16-397923af.pth"
    vgg.parent.mkdir(parents=True)
    vgg.write_bytes(b"not the torchvision file")  # its sha256 does not start with 397923af
    ffhq = cache / "weights" / "edm-ffhq-64x64-uncond-vp.pkl"
    ffhq.write_bytes(b"changed after download")
    (cache / "SHA256SUMS").write_text(f"{hashlib.sha256(b'original').hexdigest()}  {ffhq}\n")
    out = _run("--dry-run", "edm", "lpips", cache=cache, torch_home=th)
    assert out.returncode == 0, out.stderr
    assert f"present   {pkl}" in out.stdout
    assert f"would get {vgg}" in out.stdout and "expected prefix 397923af" in out.stderr
    assert f"would get {ffhq}" in out.stdout and "changed since it was downloaded" in out.stderr
    assert "would get" in out.stdout and "fid-refs" not in out.stdout  # only the named groups
    assert sorted(p.name for p in (cache / "weights").iterdir()) == sorted([pkl.name, ffhq.name])  # nothing written


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_configs_resolve_and_name_missing_weights(name, tmp_path, monkeypatch):
    monkeypatch.delenv("EDM_REPO", raising=False)
    cfg = OmegaConf.create({
        "paths": {"weights": str(tmp_path / "weights")},
        "model": OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml"),
    })
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert set(model) == {"name", "options", "guidance_type", "guidance_scale", "default_loss"}
    assert model["default_loss"] == "lpips_vgg" and (REPO / "configs" / "loss" / "lpips_vgg.yaml").is_file()
    if name.startswith("sd_"):
        assert (model["guidance_type"], model["guidance_scale"]) == ("classifier-free", 7.5)
        assert (model["options"]["height"], model["options"]["width"]) == (512, 512)
    else:
        assert model["guidance_type"] == "uncond"
    # every option is accepted by the loader: the only failure is the absent weights, named with the script
    with pytest.raises(FileNotFoundError) as err:
        load_model(model["name"], device="cpu", **model["options"])
    assert str(tmp_path / "weights" / model["options"]["checkpoint"]) in str(err.value)
    assert "scripts/download_model.sh" in str(err.value)


def test_offline_failure_leaves_nothing_and_cache_flag_stays_inside(tmp_path):
    """No network (a curl that fails at once): exit 1, no `mv: cannot stat`, no directory created, and with
    --cache nothing is written outside it (not even the torch hub)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text("#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
    (fake / "curl").chmod(0o755)
    home, cache = tmp_path / "home", tmp_path / "c"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "LD3_CACHE", "XDG_CACHE_HOME")}
    env.update(PATH=f"{fake}:{env.get('PATH', '')}", HOME=str(home))
    out = subprocess.run(["bash", str(SCRIPT), "--cache", str(cache), "edm", "lpips"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "cannot stat" not in out.stderr and "download of" in out.stderr
    assert not cache.exists() and not home.exists()
