"""Two jobs side by side: how their predictions of the same images agree, counted inside PostgreSQL.

The predictions of both jobs are joined on the image and counted per (true label, A's
prediction, B's prediction) and the model versions that made them: at most 11 x 10 x 10 rows
per pair of versions (one pair, unless a job's version changed) come back, however many images
the jobs share, so comparing two jobs of a million images never brings a million rows into Python.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from shared.db import jobs, statistics
from shared.db.connection import Connection, query

# PostgreSQL reads the images' true labels from the (true_label, id) index (an index-only scan),
# not from the table's heap of about a kilobyte of image per row; no label counts as UNLABELLED.
AGGREGATE = """
SELECT COALESCE(d.true_label, %(unlabelled)s) AS true_label, a.predicted_label, b.predicted_label,
       a.model_version, b.model_version, count(*)
FROM predictions a
JOIN predictions b ON b.job_id = %(b)s AND b.input_data_id = a.input_data_id
LEFT JOIN input_data d ON d.id = a.input_data_id
WHERE a.job_id = %(a)s
GROUP BY 1, 2, 3, 4, 5
"""


@dataclasses.dataclass(frozen=True)
class JobPair:
    """Both jobs (``jobs.get_job``'s rows) and their aggregate over the images both predicted."""

    job_a: dict[str, Any]
    job_b: dict[str, Any]
    # (true label or statistics.UNLABELLED, A's prediction, B's prediction, images), sorted
    counts: list[tuple[int, int, int, int]]
    # The model versions that made each job's predictions of those images, sorted: the job's
    # own version as a rule, and the truth where the job records none (production's, then).
    versions_a: list[str]
    versions_b: list[str]


class UnknownJob(LookupError):
    """One of the two jobs is not in the database."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"there is no job {job_id}")
        self.job_id = job_id


def job_pair(conn: Connection, job_a: int, job_b: int) -> JobPair:
    """Both jobs and their aggregate; UnknownJob names the first id that does not exist."""
    found = {}
    for job_id in (job_a, job_b):
        job = jobs.get_job(conn, job_id)
        if job is None:
            raise UnknownJob(job_id)
        found[job_id] = job
    counts: collections.Counter[tuple[int, int, int]] = collections.Counter()
    versions_a, versions_b = set(), set()
    for true_label, predicted_a, predicted_b, version_a, version_b, images in query(
        conn, AGGREGATE, {"a": job_a, "b": job_b, "unlabelled": statistics.UNLABELLED}
    ):
        counts[true_label, predicted_a, predicted_b] += images
        versions_a.add(version_a)
        versions_b.add(version_b)
    triples = sorted((*key, images) for key, images in counts.items())
    return JobPair(found[job_a], found[job_b], triples, sorted(versions_a), sorted(versions_b))
