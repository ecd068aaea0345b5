"""Console output that does not break tqdm progress bars."""

from __future__ import annotations

import logging
import sys


class TqdmLoggingHandler(logging.Handler):
    """A logging handler that prints through ``tqdm.write``: log lines appear above an active bar."""

    def __init__(self, stream=None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream or sys.stdout)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)
