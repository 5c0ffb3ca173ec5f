"""Metrics: their definitions, their per-process files, and the queues' depth read at scrape time."""

from shared.observability import files, metrics, queues

__all__ = ["files", "metrics", "queues"]
