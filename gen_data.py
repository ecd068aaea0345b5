"""Generate teacher data: ``python gen_data.py [overrides]`` (options: configs/gen_data.yaml, docs/data.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="gen_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ld3.data import generate_teacher_data

    generate_teacher_data(cfg)


if __name__ == "__main__":
    main()
