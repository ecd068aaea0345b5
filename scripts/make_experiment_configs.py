#!/usr/bin/env python
"""Write ``configs/experiment/*.yaml``: one Hydra experiment per published table cell (model, solver and
order, NFE, teacher, loss, learner hyper-parameters, FID reference), each citing the reference it mirrors.

    python scripts/make_experiment_configs.py            # (re)write the files
    python scripts/make_experiment_configs.py --check    # exit 1 if a committed file differs

It also writes the per-model presets that reproduce the LD3 reference's settings (``REFERENCE_MODELS``
below, docs/presets.md): ``configs/learner_preset/<model>.yaml`` (teacher solver / order / grid / steps and
the learner's hyper-parameters; picked by ``optional learner_preset: ${model}`` in configs/config.yaml) and
``configs/solver_preset/<model>/<solver>.yaml`` (the student solver's order and UniPC variant; picked by
``optional solver_preset: ${model}/${solver}`` in config.yaml and eval_fid.yaml). The experiments of those
models rely on the presets instead of repeating them (one source).

Usage of a written experiment: ``python main.py +experiment=ld3_cifar10_ipndm_nfe4`` (learn), and
``python eval_fid.py +experiment=ld3_cifar10_ipndm_nfe4 discretization=gits`` (score a baseline);
``scripts/reproduce.py TABLE`` runs a whole table. The settings below come from github vinhsuhi/LD3
``configs/*.yml`` and from the papers (see /docs/reproduce.md); where our sources do not say, the
comment in the file says so and this project's default is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "configs" / "experiment"

LD3_PAPER = "Tong et al., Learning to Discretize Denoising Diffusion ODEs (arXiv 2405.15506)"

# learner hyper-parameters of the LD3 reference configs (github vinhsuhi/LD3 configs/*.yml)
LD3_EDM = {"time_mode": "lambda", "win_rate": 0.5, "num_train": 50, "num_valid": 50, "main_train_batch_size": 2,
           "main_valid_batch_size": 150, "training_rounds_v1": 2, "training_rounds_v2": 5, "lr_time_1": 0.005,
           "lr_time_2": 0.1, "min_lr_time_1": 5.0e-5, "min_lr_time_2": 1.0e-6, "momentum_time_1": 0.9,
           "weight_decay_time_1": 0.0, "shift_lr_decay": 0.5, "lr_time_decay": 0.8, "patient": 5, "lr2_patient": 5}
LD3_LATENT = {**LD3_EDM, "time_mode": "time", "main_train_batch_size": 1, "main_valid_batch_size": 50,
              "training_rounds_v2": 3, "lr_time_2": 0.001}
LD3_SD = {**LD3_LATENT, "num_train": 25, "num_valid": 25, "main_valid_batch_size": 1}


def inception(ref: str, captions: str | None = None) -> Dict[str, Any]:
    return {"feature": "inception", "ref_stats": "${paths.fid_refs}/" + ref, "reference_images": None,
            "reference_split": "val",
            "inception_weights": "${paths.weights}/weights-inception-2015-12-05-6726825d.pth",
            "inception_resize": "tf1", "quantize": True, "captions": captions}


EDM_SETS = {
    # key: (model config, reference yml, FID statistics, title)
    "cifar10": ("edm_cifar10", "configs/cifar10.yml", "cifar10-32x32.npz", "CIFAR-10 32x32 (EDM DDPM++ VP)"),
    "afhqv2": ("edm_afhqv2", "configs/afhqv2.yml", "afhqv2-64x64.npz", "AFHQv2 64x64 (EDM DDPM++ VP)"),
    "ffhq": ("edm_ffhq", "configs/ffhq.yml", "ffhq-64x64.npz", "FFHQ 64x64 (EDM DDPM++ VP)"),
}
SOLVERS = ("ipndm", "uni_pc")  # options: configs/solver_preset/<model>/<solver>.yaml (REFERENCE_MODELS)

# ------------------------------------------------------------------------------------------------------------
# The LD3 reference's per-model settings (github vinhsuhi/LD3 at the mirrored commit; docs/presets.md cites
# every line). "order" and "variant" are the yml's `order` / `unipc_variant`: its main.py passes `order` to
# every solver's sample_simple (main.py l.66-72, l.125) and gen_data.py gives the teacher the same order and
# variant (gen_data.py l.103-109). Teacher grids: `--skip_type edm` (gen_data.sh) is Karras' rho = 7 on sigma
# for the EDM (VE-wrapped) models and rho = 7 applied to t for VP models (samplers/general_solver.py
# get_time_step_edm l.299-315: sigma = t outside NoiseScheduleVE), i.e. our `edm` and `poly` kinds.
REF_LD3_EDM = dict(LD3_EDM)      # configs/cifar10.yml, ffhq.yml, afhqv2.yml l.8, l.14-34
REF_LD3_LATENT = dict(LD3_LATENT)  # configs/latent_diff_LSUN.yml, latent_diff_imn.yml l.14, l.20-40
REF_LD3_SD = dict(LD3_SD)        # configs/stable_diff_v1-4.yml, stable_diff_v1-5.yml l.14, l.20-40
# the reference's SD training prompts (teacher data and LD3 training)
SD_PROMPTS = {"prompt_path": "${paths.data_dir}/coco/captions_val2014.json",
              "prompt_source": "COCO val2014 captions, as the reference (scripts/gen_data.sh l.36 --prompt_path "
                               "captions_val2014.json; README.md l.34 downloads it)"}
REFERENCE_MODELS: Dict[str, Dict[str, Any]] = {
    "edm_cifar10": {"yml": "configs/cifar10.yml", "order": 3, "variant": "bh1", "learner": REF_LD3_EDM,
                    "teacher": {"steps": 20, "kind": "edm"},
                    "teacher_source": "scripts/gen_data.sh l.1-8 (and README.md l.41-51): uni_pc, --steps 20, "
                                      "--skip_type edm"},
    "edm_ffhq": {"yml": "configs/ffhq.yml", "order": 3, "variant": "bh1", "learner": REF_LD3_EDM,
                 "teacher": {"steps": 20, "kind": "edm"},
                 "teacher_source": "scripts/train.sh l.6-9: data_dir train_data_ffhq/uni_pc_NFE20_edm"},
    "edm_afhqv2": {"yml": "configs/afhqv2.yml", "order": 3, "variant": "bh1", "learner": REF_LD3_EDM,
                   "teacher": {"steps": 20, "kind": "edm"},
                   "teacher_source": "scripts/train.sh l.11-14: data_dir train_data_afhqv2/uni_pc_NFE20_edm"},
    "ldm_lsun_bedroom": {"yml": "configs/latent_diff_LSUN.yml", "order": 3, "variant": "bh2",
                         "learner": REF_LD3_LATENT, "teacher": {"steps": 20, "kind": "poly"},
                         "teacher_source": "scripts/gen_data.sh l.10-17: uni_pc, --steps 20, --skip_type edm "
                                           "(rho 7 on t for this VP model)"},
    "ldm_cin256": {"yml": "configs/latent_diff_imn.yml", "order": 3, "variant": "bh2", "learner": REF_LD3_LATENT,
                   "teacher": {"steps": 20, "kind": "poly"},
                   "teacher_source": "scripts/gen_data.sh l.19-26: uni_pc, --steps 20, --skip_type edm "
                                     "(rho 7 on t for this VP model)"},
    "sd_v1_4": {"yml": "configs/stable_diff_v1-4.yml", "order": 2, "variant": "bh2", "learner": REF_LD3_SD,
                **SD_PROMPTS,
                "teacher": {"steps": 20, "kind": "time_uniform"},
                "teacher_source": "scripts/gen_data.sh l.28-36: uni_pc, --skip_type time_uniform, --steps 5 "
                                  "(README.md l.60-69: --steps 6); ours: 20 steps (docs/presets.md)"},
    "sd_v1_5": {"yml": "configs/stable_diff_v1-5.yml", "order": 2, "variant": "bh2", "learner": REF_LD3_SD,
                **SD_PROMPTS,
                "teacher": {"steps": 20, "kind": "time_uniform"},
                "teacher_source": "as sd_v1_4 (the reference has no v1-5 data script): uni_pc, time_uniform; "
                                  "ours: 20 steps (docs/presets.md)"},
}
# student solvers whose order the reference's yml sets (the same `order` for each); uni_pc also its variant
PRESET_SOLVERS = ("uni_pc", "ipndm", "dpm_solver++", "dpm_solver_pp")


def learner_preset(model: str, r: Dict[str, Any]) -> str:
    t = r["teacher"]
    lines = [
        "# @package _global_",
        f"# The LD3 reference's settings for model={model} (github vinhsuhi/LD3 {r['yml']}; teacher:",
        f"# {r['teacher_source']}).",
        "# Picked automatically by configs/config.yaml (`optional learner_preset: ${model}`); the student",
        f"# solver's order / variant: configs/solver_preset/{model}/<solver>.yaml. docs/presets.md lists every",
        "# value with its source line and where this project differs on purpose. Command-line keys win",
        "# (e.g. teacher.steps=50, learner.lr_time_2=0.01); turn it off with `~learner_preset`.",
        "# Generated by scripts/make_experiment_configs.py: edit the script, not this file.",
        "teacher:",
        "  solver:",
        "    name: uni_pc",
        "    options:",
        f"      order: {r['order']}",
        f"      variant: {r['variant']}",
        f"  steps: {t['steps']}",
        "  discretization:",
        f"    kind: {t['kind']}"
        + ("              # rho 7 (the kind's default) on t: the reference's `edm` on a VP model"
           if t["kind"] == "poly" else ""),
        "    options: null            # the kind's defaults (replaces, not merges with, the discretization group's)",
    ]
    if r.get("prompt_path"):
        lines += [f"  prompt_path: {r['prompt_path']}",
                  f"  # ^ training prompts: {r['prompt_source']}"]
    lines += _block("learner", r["learner"])
    return "\n".join(lines) + "\n"


def solver_preset(model: str, r: Dict[str, Any], solver: str) -> str:
    opts = {"order": r["order"]}
    if solver == "uni_pc":
        opts["variant"] = r["variant"]
    lines = [
        "# @package _global_",
        f"# model={model}, solver={solver}: the LD3 reference's `order`"
        + (" and `unipc_variant`" if solver == "uni_pc" else "") + f" ({r['yml']}).",
        "# Picked by `optional solver_preset: ${model}/${solver}` (configs/config.yaml, eval_fid.yaml);",
        "# docs/presets.md.",
        "# Generated by scripts/make_experiment_configs.py: edit the script, not this file.",
    ]
    lines += _block("solver", {"options": opts})
    return "\n".join(lines) + "\n"


def preset_files() -> Iterator[Tuple[Path, str]]:
    for model, r in REFERENCE_MODELS.items():
        yield REPO / "configs" / "learner_preset" / f"{model}.yaml", learner_preset(model, r)
        for solver in PRESET_SOLVERS:
            yield REPO / "configs" / "solver_preset" / model / f"{solver}.yaml", solver_preset(model, r, solver)


DIGITS_FID = {"feature": "model", "ref_stats": None, "reference_images": "digits", "reference_split": "val",
              "inception_weights": None, "quantize": True, "captions": None}


def experiments() -> Iterator[Tuple[str, Dict[str, Any]]]:
    for solver in ("ipndm", "uni_pc", "dpm_solver++"):
        for nfe in range(4, 11):
            yield f"ld3_digits_{solver.replace('+', 'p')}_nfe{nfe}", {
                "title": f"LD3 on the embedded digits model (CPU), {solver}, NFE {nfe}", "table": "embedded_digits",
                "paper": "none: this project's CPU analogue of the LD3 tables (docs/results_embedded_fid.md)",
                "mirrors": "the LD3 recipe (teacher UniPC 20 steps) with configs/learner_preset/digits.yaml sizes",
                "model": "digits", "solver": solver, "solver_options": {}, "steps": nfe,
                "discretization": "logSNR", "teacher": {"solver": "uni_pc", "steps": 20}, "loss": "l2",
                "learner": "ld3", "learner_options": {}, "fid": DIGITS_FID, "num_samples": 1000,
                "baselines": ["time_uniform", "time_quadratic", "logSNR", "edm", "gits", "dmn"], "learned": "ld3",
            }
    for key, (model, yml, ref, title) in EDM_SETS.items():
        for solver in SOLVERS:
            for nfe in range(4, 11):
                yield f"ld3_{key}_{solver}_nfe{nfe}", {
                    "title": f"LD3, {title}, {solver}, NFE {nfe}", "table": f"ld3_{key}", "paper": LD3_PAPER,
                    "mirrors": f"vinhsuhi/LD3 {yml} (solver {solver} as in the paper's {solver} rows; teacher, "
                               f"solver order and learner: configs/learner_preset/{model}.yaml, "
                               f"configs/solver_preset/{model}/{solver}.yaml)",
                    "model": model, "solver": solver, "solver_options": {}, "steps": nfe,
                    "discretization": "logSNR", "teacher": {},
                    "loss": "lpips_vgg", "learner": "ld3", "learner_options": {}, "fid": inception(ref),
                    "num_samples": 50000, "baselines": ["logSNR", "edm", "time_uniform", "gits", "dmn"],
                    "learned": "ld3",
                }
    latent = {
        "lsun_bedroom": ("ldm_lsun_bedroom", "configs/latent_diff_LSUN.yml", "VIRTUAL_lsun_bedroom256.npz",
                         "LSUN bedroom 256 (CompVis LDM VQ-f4)", {}),
        "imagenet256": ("ldm_cin256", "configs/latent_diff_imn.yml", "VIRTUAL_imagenet256_labeled.npz",
                        "ImageNet 256 class-conditional (CompVis LDM cin256-v2, CFG 2.0)",
                        {"guidance_type": "classifier-free", "guidance_scale": 2.0}),
    }
    for key, (model, yml, ref, title, model_over) in latent.items():
        for nfe in range(4, 11):
            yield f"ld3_{key}_uni_pc_nfe{nfe}", {
                "title": f"LD3, {title}, UniPC, NFE {nfe}", "table": f"ld3_{key}", "paper": LD3_PAPER,
                "mirrors": f"vinhsuhi/LD3 {yml} (teacher, solver order / variant and learner: "
                           f"configs/learner_preset/{model}.yaml, configs/solver_preset/{model}/uni_pc.yaml)",
                "model": model, "model_options": model_over,
                "solver": "uni_pc", "solver_options": {}, "steps": nfe,
                "discretization": "time_uniform", "teacher": {},
                "loss": "lpips_vgg", "learner": "ld3", "learner_options": {}, "fid": inception(ref),
                "num_samples": 50000, "baselines": ["time_uniform", "logSNR", "edm", "dmn"], "learned": "ld3",
            }
    for nfe in range(4, 8):
        yield f"ld3_sd15_ipndm_nfe{nfe}", {
            "title": f"LD3, Stable Diffusion v1.5 (CFG 7.5, 512x512), iPNDM, NFE {nfe}", "table": "ld3_sd15",
            "paper": LD3_PAPER,
            "mirrors": "vinhsuhi/LD3 configs/stable_diff_v1-5.yml (learner sizes and iPNDM order 2: "
                       "configs/learner_preset/sd_v1_5.yaml, configs/solver_preset/sd_v1_5/ipndm.yaml; the table's "
                       "teacher is iPNDM on GITS, not the preset's UniPC; teacher steps are not in our sources: "
                       "20, ours)",
            "model": "sd_v1_5", "solver": "ipndm", "solver_options": {}, "steps": nfe,
            "discretization": "gits", "teacher": {"solver": "ipndm", "steps": 20, "discretization": "gits"},
            "loss": "lpips_vgg", "learner": "ld3", "learner_options": {},
            "fid": inception("coco2014-val-30k.npz", "${paths.data_dir}/coco/captions_val2014_30k.json"),
            "num_samples": 30000, "baselines": ["time_uniform", "gits"], "learned": "ld3",
        }
    for nfe in (5, 6, 8, 10):
        yield f"gits_cifar10_ipndm_nfe{nfe}", {
            "title": f"GITS, CIFAR-10 32x32 (EDM), iPNDM, NFE {nfe}", "table": "gits_cifar10",
            "paper": "Chen et al., A Geometric Perspective on Diffusion Models / GITS (ICML 2024)",
            "mirrors": "zju-pi/diff-sampler gits-main (coeff 1.15, iPNDM teacher on a fine EDM grid)",
            "model": "edm_cifar10", "solver": "ipndm", "solver_options": {"order": 4},  # diff-sampler's max_order
            "steps": nfe, "discretization": "gits", "teacher": {}, "loss": "lpips_vgg",
            "learner": "ld3", "learner_options": {}, "fid": inception("cifar10-32x32.npz"),
            "num_samples": 50000, "baselines": ["edm", "time_uniform", "logSNR", "gits"], "learned": None,
        }
    yield "pfdiff_imagenet64_classifier_nfe4", {
        "title": "PFDiff, ImageNet 64x64 (ADM, classifier guidance), DDIM base, NFE 4", "table": "pfdiff_imagenet64",
        "paper": "Wang et al., PFDiff: Training-free Acceleration of Diffusion Models (onefly123/PFDiff)",
        "mirrors": "onefly123/PFDiff (ADM ImageNet-64 with its classifier; k and h are this project's defaults, "
                   "the guidance scale is the model config's: the paper's values are not in our sources)",
        "model": "adm_imagenet64", "model_options": {"guidance_type": "classifier"}, "solver": "pfdiff",
        "solver_options": {"base": "ddim", "k": 1, "h": 1}, "steps": 4, "discretization": "time_uniform",
        "teacher": {"solver": "uni_pc", "steps": 20}, "loss": "lpips_vgg", "learner": "ld3",
        "learner_options": LD3_EDM, "fid": inception("VIRTUAL_imagenet64_labeled.npz"), "num_samples": 50000,
        "baselines": ["time_uniform"], "baseline_solvers": ["ddim", "pfdiff"], "learned": None,
    }
    yield "timetuner_lsun_bedroom_ddim_nfe10", {
        "title": "TimeTuner, LSUN bedroom 256 (CompVis LDM), DDIM, 10 steps", "table": "timetuner_lsun_bedroom",
        "paper": "Xia et al., Towards More Accurate Diffusion Model Acceleration with A Timestep Tuner (CVPR 2024)",
        "mirrors": "THU-LYJ-Lab/time-tuner time_tuner.py (Adam lr 2e-3, sequential tuning, reference grid)",
        "model": "ldm_lsun_bedroom", "solver": "ddim", "solver_options": {}, "steps": 10,
        "discretization": "time_uniform", "teacher": {}, "loss": "l2",  # teacher: the LD3 preset's
        "learner": "timetuner", "learner_options": {"tune_type": "sequential", "lr": 2.0e-3},
        "fid": inception("VIRTUAL_lsun_bedroom256.npz"), "num_samples": 50000, "baselines": ["time_uniform"],
        "learned": "timetuner",
    }


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    s = str(v)
    return f'"{s}"' if any(c in s for c in ":#{}[],&*!|>'\"%@`") or s != s.strip() else s


def _block(name: str, d: Dict[str, Any], indent: int = 0) -> List[str]:
    pad = " " * indent
    if not d:
        return [f"{pad}{name}: {{}}"]
    lines = [f"{pad}{name}:"]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += _block(k, v, indent + 2)
        else:
            lines.append(f"{pad}  {k}: {_yaml_value(v)}")
    return lines


def render(name: str, e: Dict[str, Any]) -> str:
    lines = [
        "# @package _global_",
        f"# {e['title']}.",
        f"# Paper: {e['paper']}. Table: scripts/reproduce.py {e['table']}.",
        f"# Mirrors: {e['mirrors']}.",
        f"# Learn:  python main.py +experiment={name}",
        f"# Score:  python eval_fid.py +experiment={name} discretization=<baseline>   (or discretization=learned ...)",
        "# Generated by scripts/make_experiment_configs.py: edit the script, not this file.",
        "defaults:",
        f"  - override /model: {e['model']}",
        f"  - override /solver: {e['solver']}",
        f"  - override /discretization: {e['discretization']}",
        f"  - override /learner: {e['learner']}",
        f"  - override /loss: {e['loss']}",
        "  - _self_",
        "",
        f"steps: {e['steps']}",
    ]
    if e.get("model_options"):
        lines += _block("model", e["model_options"])
    if e["solver_options"]:
        lines += _block("solver", {"options": e["solver_options"]})
    if e["teacher"]:
        lines += _block("teacher", e["teacher"])
    if e["learner_options"]:
        lines += _block("learner", e["learner_options"])
    lines += _block("fid", e["fid"])
    meta = {"name": name, "table": e["table"], "paper": e["paper"], "mirrors": e["mirrors"],
            "num_samples": e["num_samples"], "baselines": e["baselines"],
            "baseline_solvers": e.get("baseline_solvers", [e["solver"]]), "learned": e["learned"]}
    lines += _block("experiment", meta)
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    files = [(OUT / f"{name}.yaml", render(name, e)) for name, e in experiments()] + list(preset_files())
    for path, text in files:
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run scripts/make_experiment_configs.py):", ", ".join(stale), file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(list(experiments()))} experiments in {OUT} and "
          f"{len(list(preset_files()))} preset files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
