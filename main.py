"""Learn a time discretization with LD3 (Tong et al. 2024): ``python main.py [overrides]``.

Thin entry point; the work is done by :func:`ld3.learners.pipeline.run_ld3` (docs/ld3.md). Config checks,
thread defaults and one-line errors: :mod:`ld3.cli`.
"""

from omegaconf import DictConfig

from ld3.cli import entry_point


@entry_point("config", "main")
def main(cfg: DictConfig) -> float:
    from ld3.learners.pipeline import run_ld3

    result = run_ld3(cfg)
    return float(result["learned"])  # the held-out distance (what a Hydra sweeper would minimize)


if __name__ == "__main__":
    main()
