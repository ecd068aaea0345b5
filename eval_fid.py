"""Score a model + solver + discretization with a Fréchet distance (docs/architecture.md).

Config checks, thread defaults and one-line errors: :mod:`ld3.cli`.
"""

from omegaconf import DictConfig

from ld3.cli import entry_point


@entry_point("eval_fid", "eval_fid")
def main(cfg: DictConfig) -> float:
    from ld3.metrics.evaluate import run_from_config

    result = run_from_config(cfg)
    print(f"FID ({result['feature']}, {result['num_samples']} samples, NFE {result['nfe']}): {result['fid']:.4f}")
    return result["fid"]


if __name__ == "__main__":
    main()
