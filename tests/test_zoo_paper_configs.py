"""configs/model/{adm_*, ldm_*} resolve and name their missing weights; scripts/download_model.sh fetches the
files those configs expect, and passes every --include pattern of a Hugging Face group to the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ld3.models.zoo import load_model
from ld3.models.zoo.adm import ADM_RELEASES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_model.sh"
CONFIGS = {  # config -> (download group, guidance, scale)
    "adm_imagenet64": ("adm", "classifier", 1.0),
    "adm_imagenet256": ("adm", "classifier", 2.5),
    "ldm_lsun_bedroom": ("ldm", "uncond", 1.0),
    "ldm_lsun_church": ("ldm", "uncond", 1.0),
    "ldm_cin256": ("ldm", "classifier-free", 2.0),
}


def _model_cfg(name: str, weights: Path) -> dict:
    cfg = OmegaConf.create({"paths": {"weights": str(weights)},
                            "model": OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")})
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paper_configs_resolve_and_name_missing_weights(name, tmp_path):
    group, guidance, scale = CONFIGS[name]
    model = _model_cfg(name, tmp_path / "weights")
    assert set(model) == {"name", "options", "guidance_type", "guidance_scale", "default_loss"}
    assert (model["guidance_type"], model["guidance_scale"]) == (guidance, scale)
    assert (REPO / "configs" / "loss" / f"{model['default_loss']}.yaml").is_file()
    text = (REPO / "configs" / "model" / f"{name}.yaml").read_text()
    assert "FID reference" in text
    assert "Reproduces" in text or "Not in the LD3" in text
    with pytest.raises(FileNotFoundError) as err:  # every option is accepted; only the weights are absent
        load_model(model["name"], device="cpu", **model["options"])
    assert str(tmp_path / "weights" / model["options"]["checkpoint"]) in str(err.value)
    assert f"scripts/download_model.sh {group}" in str(err.value)


def _run(*args: str, cache: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD3_CACHE=str(cache), TORCH_HOME=str(cache / "torch"),
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_download_script_lists_what_the_configs_expect(tmp_path):
    cache = tmp_path / "cache"
    out = _run("--list", cache=cache)
    assert out.returncode == 0, out.stderr
    for rel in ADM_RELEASES.values():
        for f in (rel.checkpoint, rel.classifier_checkpoint):
            assert f"{cache}/weights/{f}" in out.stdout
            assert f"https://openaipublic.blob.core.windows.net/diffusion/jul-2021/{f}" in out.stdout
    for name in CONFIGS:
        ckpt = _model_cfg(name, cache / "weights")["options"]["checkpoint"]
        if ckpt.startswith("ldm/lsun"):  # shipped inside a zip extracted next to it
            assert f"{cache}/weights/{Path(ckpt).parent}/" in out.stdout
        else:
            assert f"{cache}/weights/{ckpt}" in out.stdout
    for ref in ("VIRTUAL_imagenet64_labeled", "VIRTUAL_imagenet256_labeled", "VIRTUAL_lsun_bedroom256"):
        assert f"{cache}/fid-refs/{ref}.npz" in out.stdout
    dry = _run("--dry-run", "ldm", cache=cache)
    assert dry.returncode == 0 and "would unzip" in dry.stdout and "lsun_bedrooms.zip" in dry.stdout
    assert not cache.exists()


@pytest.mark.parametrize("cli", ["hf", "huggingface-cli"])
def test_hugging_face_group_passes_every_include_pattern(tmp_path, cli):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.txt"
    fake = bin_dir / cli
    fake.write_text(f'#!/bin/bash\nfor a in "$@"; do echo "$a"; done >> "{log}"\necho --- >> "{log}"\n')
    fake.chmod(0o755)
    out = _run("ddpm", cache=tmp_path / "cache", env_extra={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("---\n") if c.strip()]
    assert len(calls) == 3  # google/ddpm-cifar10-32, -bedroom-256, -church-256
    patterns = ["config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.bin"]
    for argv in calls:
        assert argv[0] == "download" and argv[2] == "--local-dir"
        rest = argv[4:]
        if cli == "hf":  # one pattern per --include flag
            assert rest == [x for p in patterns for x in ("--include", p)]
        else:  # argparse nargs='*': one flag, every pattern
            assert rest == ["--include", *patterns]
