"""Generate teacher data: ``python gen_data.py [overrides]`` (options: configs/gen_data.yaml, docs/data.md).

Config checks, thread defaults and one-line errors: :mod:`ld3.cli`.
"""

from omegaconf import DictConfig

from ld3.cli import entry_point


@entry_point("gen_data", "gen_data")
def main(cfg: DictConfig) -> None:
    from ld3.data import generate_teacher_data

    generate_teacher_data(cfg)


if __name__ == "__main__":
    main()
