"""Conditions of teacher samples: class labels (class-conditional models) and prompts (text models).

* Labels: ``uniform`` draws one label per sample from that sample's seed generator (after its
  latent); an int gives every sample that class; a list is cycled over the sample positions
  (``[0, 1, ..., 9]`` gives balanced classes). ``null`` means ``uniform`` when the model is
  class-conditional and guided (classifier or classifier-free guidance), else no labels.
* Prompts: ``prompt_path`` is a COCO captions JSON (``{"annotations": [{"caption": ...}, ...]}``),
  a JSON list of strings, or a text file with one prompt a line (blank lines skipped). The first
  ``num_prompts`` are used and cycled over the sample positions.
* The unconditional input (``uncond``) is the model's null class for guided class-conditional
  models, and the empty prompt for classifier-free guided text models (not ``uc = c``, a bug of the
  LD3 reference's random-label path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import torch

from ld3.data.latents import latents_and_labels

GUIDED = ("classifier", "classifier-free")


def load_prompts(path: str, num_prompts: int | None = None) -> List[str]:
    """Prompts from a COCO captions JSON, a JSON list of strings, or a text file (one a line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt_path {str(p)!r} does not exist (expected a COCO captions JSON or a text file)")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompt_path {str(p)!r} is not valid JSON: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            prompts = [a["caption"].strip() for a in data["annotations"] if isinstance(a, dict) and "caption" in a]
        elif isinstance(data, list) and all(isinstance(s, str) for s in data):
            prompts = [s.strip() for s in data]
        else:
            raise ValueError(
                f"prompt_path {str(p)!r}: expected COCO captions ({{'annotations': [{{'caption': ...}}]}}) "
                "or a JSON list of strings"
            )
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [s for s in prompts if s]
    if num_prompts is not None:
        prompts = prompts[:num_prompts]
    if not prompts:
        raise ValueError(f"prompt_path {str(p)!r} holds no prompts")
    return prompts


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode("utf-8")).hexdigest()


@dataclass
class ConditionPlan:
    """How to build x_T latents and (cond, uncond) for any set of sample positions."""

    kind: str  # "none" | "labels" | "prompts"
    labels: Any = None  # "uniform" | int | list
    num_classes: int = 0
    prompts: List[str] | None = None
    uncond_label: int | None = None
    uncond_prompt: str | None = None

    def describe(self) -> dict:
        d = {"kind": self.kind}
        if self.kind == "labels":
            d.update(labels=self.labels, num_classes=self.num_classes, uncond=self.uncond_label)
        elif self.kind == "prompts":
            d.update(num_prompts=len(self.prompts or []), prompts_sha256=prompts_digest(self.prompts or []),
                     uncond=self.uncond_prompt)
        return d

    def build(
        self, seeds: Sequence[int], positions: Sequence[int], shape: Sequence[int]
    ) -> Tuple[torch.Tensor, Any, Any]:
        """Latents (B, *shape) and the conditions of the samples at ``positions`` with ``seeds``."""
        uniform = self.kind == "labels" and self.labels == "uniform"
        latents, drawn = latents_and_labels(seeds, shape, self.num_classes if uniform else 0)
        n = len(seeds)
        if self.kind == "none":
            return latents, None, None
        if self.kind == "labels":
            if uniform:
                cond = drawn
            elif isinstance(self.labels, list):
                cond = torch.tensor([self.labels[p % len(self.labels)] for p in positions], dtype=torch.long)
            else:
                cond = torch.full((n,), int(self.labels), dtype=torch.long)
            uncond = None if self.uncond_label is None else torch.full((n,), self.uncond_label, dtype=torch.long)
            return latents, cond, uncond
        prompts = self.prompts or []
        cond = [prompts[p % len(prompts)] for p in positions]
        uncond = None if self.uncond_prompt is None else [self.uncond_prompt] * n
        return latents, cond, uncond


def plan_conditions(cfg: Any, model: Any) -> ConditionPlan:
    """Decide the conditioning of a run from its config (:class:`GenDataConfig`) and the loaded model."""
    guidance = cfg.model.get("guidance_type") or getattr(model, "default_guidance", "uncond")
    num_classes = getattr(model, "num_classes", None)
    null_class = getattr(model, "null_class", None)
    if cfg.prompt_path is not None:
        if num_classes:
            raise ValueError(
                f"model {model.name!r} is class-conditional ({num_classes} classes); use labels, not prompt_path"
            )
        if guidance == "classifier":
            raise ValueError("classifier guidance needs class labels; text prompts are not supported with it")
        prompts = load_prompts(cfg.prompt_path, cfg.num_prompts)
        return ConditionPlan("prompts", prompts=prompts, uncond_prompt="" if guidance == "classifier-free" else None)
    labels = cfg.labels
    if labels is None:
        if num_classes and (guidance in GUIDED or null_class is None):
            # guided, or a class-conditional network without a null class (EDM / ADM conditional
            # models sampled without guidance need a label): uniform random labels per seed
            labels = "uniform"
        elif guidance in GUIDED:
            raise ValueError(
                f"guidance_type={guidance!r} needs conditions, but model {model.name!r} has no classes; "
                "give prompt_path for a text model or use guidance_type=uncond"
            )
        else:
            return ConditionPlan("none")
    if not num_classes:
        raise ValueError(f"labels={labels!r} given, but model {model.name!r} is not class-conditional")
    bad = [v for v in ([labels] if isinstance(labels, int) else labels if isinstance(labels, list) else [])
           if v >= num_classes]
    if bad:
        raise ValueError(f"labels {bad[:5]} are out of range; model {model.name!r} has classes 0..{num_classes - 1}")
    uncond = null_class if guidance in GUIDED else None
    if guidance == "classifier-free" and null_class is None:
        raise ValueError(f"classifier-free guidance needs a null class, and model {model.name!r} has none")
    return ConditionPlan("labels", labels=labels, num_classes=int(num_classes), uncond_label=uncond)
