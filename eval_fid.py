"""Score a model + solver + discretization with a Fréchet distance (docs/architecture.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="eval_fid", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from ld3.metrics.evaluate import describe_result, run_from_config

    result = run_from_config(cfg)
    if result.get("rank", 0) == 0:  # under torchrun every process returns the same score
        print(describe_result(result))
    return result.get("fid")


if __name__ == "__main__":
    main()
