"""CLIP score of text-to-image samples (Hessel et al. 2021, "CLIPScore"; the convention of torchmetrics'
``CLIPScore``): ``max(100 * cos(E_image, E_text), 0)`` per (image, caption) pair, averaged.

The CLIP model is a Hugging Face ``transformers`` CLIP directory on local disk (``config.json``,
``model.safetensors``, tokenizer and preprocessor files), e.g. a download of ``openai/clip-vit-large-patch14``
(the torchmetrics default); nothing is fetched at run time and only safetensors weights are read.
Captions longer than the text model's context are truncated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Sequence, Union

import torch


class ClipScorer:
    """``scorer(images in [-1, 1] (B, C, H, W), captions) -> (B,)`` per-pair CLIP scores (float64)."""

    def __init__(self, path: Union[str, os.PathLike], device: str = "cpu") -> None:
        path = Path(path)
        missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no CLIP model at {path} (missing {', '.join(missing)}): expected a transformers CLIP directory "
                f"(config.json, model.safetensors, tokenizer and preprocessor files). Get one on a machine with "
                f"internet, e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir {path}`, "
                f"or set clip_model=<directory>"
            )
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.device = device
        from ld3.utils.io import sha256_file

        self.info = {"name": "clip", "implementation": "transformers CLIPModel", "path": str(path),
                     "model_type": self.model.config.model_type,
                     "weights_sha256": sha256_file(path / "model.safetensors"),
                     "score": "max(100 cos(image, text), 0) (torchmetrics CLIPScore convention)"}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(captions):
            raise ValueError(f"{images.shape[0]} images for {len(captions)} captions")
        x = images
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        pix = self.processor(images=[im for im in x], return_tensors="pt")["pixel_values"].to(self.device)
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.processor(text=list(captions), return_tensors="pt", padding=True, truncation=True,
                             max_length=max_len)
        img = self.model.get_image_features(pixel_values=pix)
        txt = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        img, txt = _embedding(img), _embedding(txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (100 * (img * txt).sum(-1)).clamp(min=0).double().cpu()


def _embedding(out) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; >= 5 an output whose pooler_output holds it."""
    return out if torch.is_tensor(out) else out.pooler_output


def clip_score(images: torch.Tensor, captions: Sequence[str], path: Union[str, os.PathLike],
               device: str = "cpu") -> float:
    """Mean CLIP score of a batch (see :class:`ClipScorer`)."""
    return float(ClipScorer(path, device)(images, captions).mean())


class ClipScoreMetric:
    """The CLIP score as a :class:`ld3.metrics.accumulate.BatchMetric`: additive float64 sums (count, sum,
    sum of squares) of per-image scores; ``captions_of_batch(b)`` gives the prompts batch b was sampled with."""

    def __init__(self, scorer: "ClipScorer", captions_of_batch: Callable[[int], Sequence[str]]) -> None:
        self.scorer = scorer
        self.captions_of_batch = captions_of_batch

    def describe(self) -> Dict[str, object]:
        return dict(self.scorer.info)

    def zeros(self) -> Dict[str, torch.Tensor]:
        return {k: torch.zeros(1, dtype=torch.float64) for k in ("count", "sum", "sum_sq")}

    def batch(self, b: int, images: torch.Tensor, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        s = self.scorer(images, list(self.captions_of_batch(b)))
        return {"count": torch.tensor([float(s.numel())], dtype=torch.float64),
                "sum": s.sum().reshape(1), "sum_sq": (s * s).sum().reshape(1)}

    def result(self, state: Dict[str, torch.Tensor]) -> Dict[str, object]:
        n = float(state["count"].item())
        if n < 1:
            raise ValueError("no CLIP scores accumulated")
        mean = float(state["sum"].item()) / n
        var = max(float(state["sum_sq"].item()) / n - mean * mean, 0.0)
        return {"clip_score": mean, "clip_score_std": var ** 0.5, "clip_model": self.describe()}
