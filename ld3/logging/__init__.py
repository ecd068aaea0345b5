"""Sweep logging: a local results store (JSONL, one row per run) and optional Weights & Biases."""

from ld3.logging.results import ResultsStore, read_results
from ld3.logging.sweep import SweepLogger, make_logger

__all__ = ["ResultsStore", "read_results", "SweepLogger", "make_logger"]
