"""Learn a time discretization (LD3 by default, ``learner=timetuner`` for TimeTuner): ``python main.py [overrides]``.

Thin entry point; the work is done by :func:`ld3.learners.pipeline.run_learner` (docs/ld3.md, docs/timetuner.md).
Config checks, thread defaults and one-line errors: :mod:`ld3.cli`.
"""

from omegaconf import DictConfig

from ld3.cli import entry_point


@entry_point("config", "main")
def main(cfg: DictConfig) -> float:
    from ld3.learners.pipeline import run_learner

    result = run_learner(cfg)
    return float(result["learned"])  # the held-out distance (what a Hydra sweeper would minimize)


if __name__ == "__main__":
    main()
