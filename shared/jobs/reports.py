"""Accuracy, per-class accuracy and the confusion matrix of a job, for the CLI and the web."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from shared import models
from shared.db.connection import Connection
from shared.digits import NUM_CLASSES
from shared.jobs import queries, store

# The seed's threshold: the default when the production model's card chose none, and always selectable.
LOW_CONFIDENCE_THRESHOLD = 0.8


@dataclasses.dataclass
class JobReport:
    job: dict[str, Any]
    confusion: np.ndarray  # rows: true label, columns: predicted label
    low_confidence: int
    wrong: list[dict[str, Any]]
    failures: list[tuple[int, str]]
    low_confidence_threshold: float = LOW_CONFIDENCE_THRESHOLD  # what ``low_confidence`` counts under

    @property
    def labelled(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float | None:
        return float(np.trace(self.confusion) / self.labelled) if self.labelled else None

    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(axis=1)
        return [float(self.confusion[k, k] / totals[k]) if totals[k] else None for k in range(NUM_CLASSES)]


def confusion_matrix(pair_counts: list[tuple[int, int, int]]) -> np.ndarray:
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for true_label, predicted_label, count in pair_counts:
        matrix[true_label, predicted_label] = count
    return matrix


def default_low_confidence_threshold(conn: Connection) -> float:
    """The production model's card's ``low_confidence_threshold``, else 0.8.

    Training chooses it from data (the share of all errors that each threshold catches), so the
    pages and ``producer report`` flag what is worth a look for the model that answers now.
    """
    try:
        card = models.registry.describe(conn, models.registry.PRODUCTION)["card"]
    except models.registry.UnknownModel:
        return LOW_CONFIDENCE_THRESHOLD
    threshold = card.get("low_confidence_threshold") if isinstance(card, dict) else None
    if isinstance(threshold, int | float) and not isinstance(threshold, bool) and 0 < threshold <= 1:
        return float(threshold)
    return LOW_CONFIDENCE_THRESHOLD


def build_job_report(
    conn: Connection, job_id: int, wrong_limit: int = 10, threshold: float | None = None
) -> JobReport | None:
    """The job's figures; ``low_confidence`` counts predictions under ``threshold`` (default: the production card's)."""
    job = store.get_job(conn, job_id)
    if job is None:
        return None
    if threshold is None:
        threshold = default_low_confidence_threshold(conn)
    return JobReport(
        job=job,
        confusion=confusion_matrix(queries.label_pair_counts(conn, job_id)),
        low_confidence=queries.count_low_confidence(conn, job_id, threshold),
        wrong=queries.wrong_predictions(conn, job_id=job_id, limit=wrong_limit),
        failures=queries.job_failures(conn, job_id),
        low_confidence_threshold=threshold,
    )
