"""Learn a time discretization (LD3 by default, ``learner=timetuner`` for TimeTuner): ``python main.py [overrides]``.

Thin Hydra entry point; the work is done by :func:`ld3.learners.pipeline.run_learner` (docs/ld3.md,
docs/timetuner.md).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from ld3.learners.pipeline import run_learner

    result = run_learner(cfg)
    return float(result["learned"])  # the held-out distance (what a Hydra sweeper would minimize)


if __name__ == "__main__":
    main()
