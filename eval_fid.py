"""Score a model + solver + discretization with a Fréchet distance (docs/architecture.md).

Config checks, thread defaults and one-line errors: :mod:`ld3.cli`.
"""

from omegaconf import DictConfig

from ld3.cli import entry_point


@entry_point("eval_fid", "eval_fid")
def main(cfg: DictConfig) -> float:
    from ld3.metrics.evaluate import describe_result, run_from_config

    result = run_from_config(cfg)
    if result.get("rank", 0) == 0:  # under torchrun every process returns the same score
        print(describe_result(result))
    return result.get("fid")


if __name__ == "__main__":
    main()
