"""One logger for runs and sweeps: Weights & Biases (online / offline / disabled) + the local store."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ld3.logging.results import ResultsStore
from ld3.utils.plain import to_plain

BACKENDS = ("local", "wandb", "disabled")
WANDB_MODES = ("online", "offline", "disabled")


class SweepLogger:
    """Log step metrics (wandb only) and one final result row per run (wandb summary + local JSONL).

    Args:
        backend: ``local`` (results store only), ``wandb`` (also Weights & Biases) or ``disabled``.
        results_path: the JSONL results store (None: no local store).
        wandb: dict with ``mode`` (online/offline/disabled), ``project``, ``entity``, ``group``, ``tags``.
        run_config: the resolved run config (stored with wandb and in each result row as ``config``).
        run_name: a name for the run.
    """

    def __init__(
        self,
        backend: str = "local",
        results_path: Optional[str] = None,
        wandb: Optional[Dict[str, Any]] = None,
        run_config: Optional[Dict[str, Any]] = None,
        run_name: Optional[str] = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"logger backend={backend!r} is not supported; allowed: {list(BACKENDS)}")
        self.backend = backend
        self.store = ResultsStore(results_path) if (results_path and backend != "disabled") else None
        self.run_config = run_config or {}
        self.run_name = run_name
        self._wandb_run = None
        wcfg = dict(wandb or {})
        mode = wcfg.get("mode", "disabled")
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={mode!r} is not supported; allowed: {list(WANDB_MODES)}")
        if backend == "wandb" and mode != "disabled":
            from ld3.utils.extras import require

            _wandb = require("wandb", "wandb", "logger=wandb")

            self._wandb_run = _wandb.init(
                project=wcfg.get("project", "ld3"),
                entity=wcfg.get("entity"),
                group=wcfg.get("group"),
                tags=list(wcfg.get("tags") or []),
                mode=mode,
                name=run_name,
                config=self.run_config,
                reinit=True,
            )

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def log_result(self, row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Record a run's final numbers (one row)."""
        if self._wandb_run is not None:
            for k, v in row.items():
                if isinstance(v, (int, float, str, bool)):
                    self._wandb_run.summary[k] = v
        if self.store is not None:
            return self.store.append({"run": self.run_name, **row, "config": self.run_config})
        return None

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def make_logger(cfg: Any, run_config: Optional[Dict[str, Any]] = None, run_name: Optional[str] = None) -> SweepLogger:
    """Build from the ``logger`` config group (an OmegaConf node or a dict)."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    wandb_cfg = to_plain(get("wandb", None))
    return SweepLogger(
        backend=get("backend", "local"),
        results_path=get("results_path", None),
        wandb=wandb_cfg,
        run_config=run_config,
        run_name=run_name,
    )
