"""Score a model + solver + discretization with a Fréchet distance (docs/architecture.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="eval_fid", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from ld3.metrics.evaluate import run_from_config

    result = run_from_config(cfg)
    print(f"FID ({result['feature']}, {result['num_samples']} samples, NFE {result['nfe']}): {result['fid']:.4f}")
    return result["fid"]


if __name__ == "__main__":
    main()
