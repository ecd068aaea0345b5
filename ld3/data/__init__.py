"""Teacher data: generation (``gen_data.py``), sharded atomic storage with resume, and reading.

* :func:`generate_teacher_data` / :func:`ensure_teacher_data`: run the teacher for every requested
  seed that is not stored yet (see :mod:`ld3.data.generate`).
* :class:`TeacherDataset`: read our directories and the LD3 reference's ``latent_*.pt`` directories.
* :func:`latent_for_seed`, :func:`prior_transform`: the per-seed latent and the latent -> x_T map
  that every consumer (learners, evaluation) must share.

Format and options: ``docs/data.md``.
"""

from ld3.data.conditions import ConditionPlan, load_prompts, plan_conditions
from ld3.data.config import GenDataConfig, parse_seeds
from ld3.data.dataset import TeacherDataset
from ld3.data.generate import (
    GenerationResult,
    ensure_teacher_data,
    generate_teacher_data,
    teacher_config_from_main,
    teacher_data_dir,
)
from ld3.data.latents import latent_for_seed, latents_and_labels, prior_scale, prior_transform, seed_generator
from ld3.data.store import FORMAT, TeacherDataError, read_manifest

__all__ = [
    "FORMAT",
    "ConditionPlan",
    "GenDataConfig",
    "GenerationResult",
    "TeacherDataError",
    "TeacherDataset",
    "ensure_teacher_data",
    "generate_teacher_data",
    "latent_for_seed",
    "latents_and_labels",
    "load_prompts",
    "parse_seeds",
    "plan_conditions",
    "prior_scale",
    "prior_transform",
    "read_manifest",
    "seed_generator",
    "teacher_config_from_main",
    "teacher_data_dir",
]
