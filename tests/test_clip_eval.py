"""CLIP score through eval_fid for a text-to-image run: the tiny Stable Diffusion pipeline directory of
test_zoo_diffusers and the tiny CLIP of test_clip_score (both written with save_pretrained, the released
on-disk formats), captions from a file, an interrupted run finished by a rerun. Oracle: the exported PNGs
scored by hand from the CLIP model's parts against caption i for seed i."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_clip_score import CLIP_MEAN, CLIP_STD, tiny_clip  # noqa: E402,F401  (fixture)
from test_fid_scale import _compose  # noqa: E402
from test_zoo_diffusers import sd_dir  # noqa: E402,F401  (fixture)

from ld3.metrics.fid import FeatureExtractor, register_feature_extractor, save_stats  # noqa: E402

CAPTIONS = ["a cat", "a dog on a mat", "zzz", "cat and dog", "a red house", "the sea"]


@register_feature_extractor("test_pixel_means")
def _pixel_means(device: str = "cpu", **_) -> FeatureExtractor:
    """A 4-d stand-in for Inception (the FID part is not under test here): 2x2 means of the grey image."""
    def fn(images):
        return torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), 2).reshape(
            images.shape[0], -1).double().cpu()

    return FeatureExtractor(fn, {"name": "test_pixel_means"})


def _overrides(sd, tmp_path, clip, *extra):
    ref = tmp_path / "ref.npz"
    if not ref.is_file():
        save_stats(ref, np.zeros(4), np.eye(4))
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return ["model=sd_v1_5", f"model.options.checkpoint={sd.name}", f"model.options.weights_dir={sd.parent}",
            "model.options.height=32", "model.options.width=32", "solver=ddim", "steps=2",
            "discretization=time_uniform", "num_samples=6", "batch_size=4", "fid=coco30k",
            "fid.feature=test_pixel_means", f"fid.ref_stats={ref}", f"fid.captions={tmp_path / 'captions.txt'}",
            "metrics=[fid,clip]", f"clip_model={clip}", "device=cpu", "progress=false", "save_grid=false",
            "logger=disabled", f"paths.results={tmp_path / 'results.jsonl'}", *extra]


def _hand_clip(clip_dir, png_dir):
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    scores = []
    for i, caption in enumerate(CAPTIONS):
        x = torch.from_numpy(np.array(Image.open(png_dir / "000000" / f"{i:06d}.png").convert("RGB")))
        x = x.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            img = model.visual_projection(model.vision_model(pixel_values=(x - CLIP_MEAN) / CLIP_STD).pooler_output)
            ids = tok(caption, return_tensors="pt", truncation=True, max_length=16)
            txt = model.text_projection(model.text_model(**ids).pooler_output)
        scores.append(max(100 * torch.nn.functional.cosine_similarity(img[0], txt[0], dim=0).item(), 0.0))
    return scores


def test_eval_fid_clip_score_resumes_and_matches_hand_computation(sd_dir, tiny_clip, tmp_path):  # noqa: F811
    from ld3.metrics.evaluate import describe_result, run_from_config

    out = tmp_path / "run"
    over = _overrides(sd_dir, tmp_path, tiny_clip, f"out_dir={out}", "save_png=true")
    part = run_from_config(_compose([*over, "max_batches=1"]))
    assert not part["complete"] and part["batches_done"] == 1
    res = run_from_config(_compose(over))
    assert res["complete"] and res["batches_computed"] == 1  # the rerun computed only the missing batch
    hand = _hand_clip(tiny_clip, out / "images")
    assert max(hand) > 1.0  # not all clamped to 0
    assert res["clip_score"] == pytest.approx(float(np.mean(hand)), abs=1e-3)
    assert res["clip_score_std"] == pytest.approx(float(np.std(hand)), abs=1e-3)
    info = res["clip_model"]
    assert info["path"] == str(tiny_clip) and len(info["weights_sha256"]) == 64 and info["model_type"] == "clip"
    assert res["metrics"] == ["fid", "clip"] and "CLIP score" in describe_result(res)


def test_clip_errors(sd_dir, tiny_clip, tmp_path):  # noqa: F811
    from ld3.metrics.evaluate import run_from_config

    with pytest.raises(FileNotFoundError, match=r"no CLIP model at .*nope.*huggingface-cli download"):
        run_from_config(_compose(_overrides(sd_dir, tmp_path, tmp_path / "nope", f"out_dir={tmp_path / 'a'}")))
    with pytest.raises(ValueError, match="set fid.captions"):
        run_from_config(_compose(["metrics=[clip]", f"clip_model={tiny_clip}", "device=cpu", "num_samples=4",
                                  "steps=2", f"out_dir={tmp_path / 'b'}", "logger=disabled"]))
