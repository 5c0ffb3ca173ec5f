"""Two jobs' predictions of the same images compared: accuracy of each, what changed, the confusion diff.

Everything here is computed from the aggregate of ``shared.jobs.comparison_store`` (images per true
label, A's prediction and B's prediction), so the CLI, the page and the API show the same
numbers and none of them needs the predictions themselves. "A" is the first job, "B" the
second; a difference is always B - A, so a positive cell is something B does more often.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from shared.db.connection import Connection
from shared.digits import NUM_CLASSES
from shared.jobs import comparison_store

# The aggregate as an array: counts[true label + 1, A's prediction, B's prediction]; row 0 holds
# the images without a true label (statistics.UNLABELLED = -1).
LABEL_ROWS = NUM_CLASSES + 1


def counts_array(triples: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    counts = np.zeros((LABEL_ROWS, NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for true_label, predicted_a, predicted_b, images in triples:
        counts[true_label + 1, predicted_a, predicted_b] += images
    return counts


@dataclasses.dataclass(frozen=True)
class Comparison:
    job_a: dict[str, Any]
    job_b: dict[str, Any]
    counts: np.ndarray  # (LABEL_ROWS, 10, 10), see counts_array
    # The model versions that made each job's predictions of the shared images (``JobPair``).
    versions_a: tuple[str, ...] = ()
    versions_b: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        job_a: dict[str, Any],
        job_b: dict[str, Any],
        triples: Iterable[tuple[int, int, int, int]],
        versions_a: Iterable[str] = (),
        versions_b: Iterable[str] = (),
    ) -> Comparison:
        return cls(job_a, job_b, counts_array(triples), tuple(versions_a), tuple(versions_b))

    @property
    def shared(self) -> int:
        """Images that both jobs predicted."""
        return int(self.counts.sum())

    @property
    def labelled(self) -> int:
        """Shared images with a true label: what the accuracies are measured on."""
        return int(self.counts[1:].sum())

    @property
    def transitions(self) -> np.ndarray:
        """[A's prediction, B's prediction] over every shared image, labelled or not."""
        return self.counts.sum(axis=0)

    @property
    def differing(self) -> int:
        """Shared images that the two jobs predicted differently."""
        return self.shared - int(np.trace(self.transitions))

    @property
    def confusion_a(self) -> np.ndarray:
        """A's confusion matrix on the labelled shared images: rows the true label, columns A's prediction."""
        return self.counts[1:].sum(axis=2)

    @property
    def confusion_b(self) -> np.ndarray:
        return self.counts[1:].sum(axis=1)

    @property
    def confusion_diff(self) -> np.ndarray:
        """B - A: positive off the diagonal where B makes a mistake more often, on it where B is right more often."""
        return self.confusion_b - self.confusion_a

    @property
    def accuracy_a(self) -> float | None:
        return float(np.trace(self.confusion_a) / self.labelled) if self.labelled else None

    @property
    def accuracy_b(self) -> float | None:
        return float(np.trace(self.confusion_b) / self.labelled) if self.labelled else None

    def only_in(self, job: dict[str, Any]) -> int:
        """That job's predictions of images the other did not predict."""
        return int(job["done_count"]) - self.shared

    def changes(self) -> list[tuple[int, int, int]]:
        """(A's prediction, B's prediction, images) for every pair that differs, most images first."""
        moved = [(a, b, int(self.transitions[a, b])) for a in range(NUM_CLASSES) for b in range(NUM_CLASSES) if a != b]
        return sorted((change for change in moved if change[2]), key=lambda change: (-change[2], change[0], change[1]))

    def per_true_label(self) -> list[dict[str, int]]:
        """For each true digit: its shared images, how many each job got right, and what changed between them.

        fixed: A wrong, B right; broken: A right, B wrong; changed: every image whose prediction differs
        (fixed, broken, and those both got wrong in different ways).
        """
        rows = []
        for digit in range(NUM_CLASSES):
            cube = self.counts[digit + 1]  # [A's prediction, B's prediction]
            rows.append(
                {
                    "digit": digit,
                    "images": int(cube.sum()),
                    "a_correct": int(cube[digit].sum()),
                    "b_correct": int(cube[:, digit].sum()),
                    "fixed": int(cube[:, digit].sum() - cube[digit, digit]),
                    "broken": int(cube[digit].sum() - cube[digit, digit]),
                    "changed": int(cube.sum() - np.trace(cube)),
                }
            )
        return rows

    def totals(self) -> dict[str, int]:
        """fixed, broken and changed over all labelled shared images, and changed among the unlabelled."""
        rows = self.per_true_label()
        unlabelled = self.counts[0]
        summed = {key: sum(row[key] for row in rows) for key in ("fixed", "broken", "changed")}
        return {**summed, "unlabelled_changed": int(unlabelled.sum() - np.trace(unlabelled))}

    def note(self) -> str | None:
        """Why there is nothing to compare, when there is nothing: a sentence for a person."""
        if self.shared:
            return None
        a, b = self.job_a, self.job_b
        unfinished = [job["id"] for job in (a, b) if job["status"] != "done"]
        if unfinished:
            waiting = " and ".join(f"job {job_id}" for job_id in unfinished)
            return (
                "no image has a prediction in both jobs yet"
                f" ({waiting} {'is' if len(unfinished) == 1 else 'are'} not done)"
            )
        return (
            f"the two jobs share no images: job {a['id']}'s {a['done_count']} predictions and job {b['id']}'s"
            f" {b['done_count']} are of different images, so there is nothing to compare"
        )

    def as_json(self) -> dict[str, Any]:
        """The comparison as plain JSON values, for ``producer compare --json`` and ``GET /api/compare``."""
        return {
            "a": self._job_json(self.job_a, self.accuracy_a, self.versions_a),
            "b": self._job_json(self.job_b, self.accuracy_b, self.versions_b),
            "shared_images": self.shared,
            "labelled": self.labelled,
            "differing": self.differing,
            **self.totals(),
            "changes": [{"from": a, "to": b, "images": images} for a, b, images in self.changes()],
            "per_true_label": self.per_true_label(),
            "confusion_a": self.confusion_a.tolist(),
            "confusion_b": self.confusion_b.tolist(),
            "confusion_diff": self.confusion_diff.tolist(),
            "note": self.note(),
        }

    def _job_json(self, job: dict[str, Any], accuracy: float | None, versions: tuple[str, ...]) -> dict[str, Any]:
        return {
            "id": job["id"],
            "model_version": job["model_version"],  # None: production's when a worker takes the job
            "prediction_versions": list(versions),
            "status": job["status"],
            "total_images": job["total_images"],
            "done_count": job["done_count"],
            "only_here": self.only_in(job),
            "accuracy": accuracy,
        }


def load_comparison(conn: Connection, job_a: int, job_b: int) -> Comparison:
    """Both jobs compared; ``comparison_store.UnknownJob`` when either does not exist."""
    pair = comparison_store.job_pair(conn, job_a, job_b)
    return Comparison.of(pair.job_a, pair.job_b, pair.counts, pair.versions_a, pair.versions_b)
