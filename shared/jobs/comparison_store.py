"""Two jobs side by side: how their predictions of the same images agree, counted inside PostgreSQL.

The predictions of both jobs are joined on the image and counted per (true label, A's
prediction, B's prediction) and the model versions that made them: at most 11 x 10 x 10 rows
per pair of versions (one pair, unless a job's version changed) come back, however many images
the jobs share, so comparing two jobs of a million images never brings a million rows into Python.

That join still reads every shared prediction (2-5 s at a million), so the aggregate of two
**finished** jobs is stored the first time it is computed (``job_comparisons``, migration 0006)
and read back afterwards. That is safe because a job's predictions are only ever added:
``store_results`` inserts them with ON CONFLICT DO NOTHING and never updates one, raising the
job's ``done_count`` by exactly the new rows in the same transaction; resuming sends only images
with neither a prediction nor a failure; the only DELETE is ``delete_upload_job``'s, which
removes only a job with no answer yet, so never one of a stored comparison. Yet a finished job can
still gain a prediction: a batch redelivered after one of its images was given up on may predict
that image after all. So the stored aggregate is keyed by the pair *and* both jobs' ``done_count`` when it was computed
(read by the statement that computed it, in its snapshot), and it is read back only while both
counts are unchanged; otherwise it is computed again and replaces the stored one. Unfinished jobs
are always computed live and never stored. The images' true labels, the third input, are never
changed once stored.

The pair is ordered: (A, B) and (B, A) are stored apart. One orientation and a transpose would
save one computation when someone compares the other way round, at the cost of a swap of columns
in every read and write; a pair is rarely compared both ways, and its rows are few.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from psycopg import sql

from shared.db.connection import Connection, query, transaction
from shared.jobs import statistics, store

# PostgreSQL reads the images' true labels from the (true_label, id) index (an index-only scan),
# not from the table's heap of about a kilobyte of image per row; no label counts as UNLABELLED.
AGGREGATE = """
SELECT COALESCE(d.true_label, %(unlabelled)s) AS true_label, a.predicted_label AS a_label, b.predicted_label AS b_label,
       a.model_version AS a_version, b.model_version AS b_version, count(*) AS images
FROM predictions a
JOIN predictions b ON b.job_id = %(b)s AND b.input_data_id = a.input_data_id
LEFT JOIN input_data d ON d.id = a.input_data_id
WHERE a.job_id = %(a)s
GROUP BY 1, 2, 3, 4, 5
"""
AGGREGATE_COLUMNS = ("true_label", "a_label", "b_label", "a_version", "b_version", "images")
AGGREGATE_OF_C = sql.SQL(", ").join(
    sql.Identifier("c", column) for column in AGGREGATE_COLUMNS
)  # of the table or subquery c
# The aggregate after whether both jobs are done and their done_count, all read in one snapshot:
# the counts the aggregate is stored for are those it was computed from. Jobs without an image in
# common give one row with NULLs for the aggregate; no row means a job was deleted meanwhile.
COMPUTE = sql.SQL("""
SELECT j.finished, j.a_done, j.b_done, {columns}
FROM (SELECT a.status = 'done' AND b.status = 'done', a.done_count, b.done_count
      FROM jobs a, jobs b WHERE a.id = %(a)s AND b.id = %(b)s) AS j (finished, a_done, b_done)
LEFT JOIN ({aggregate}) AS c ON true
""").format(columns=AGGREGATE_OF_C, aggregate=sql.SQL(AGGREGATE))
STORED = sql.SQL("""
SELECT p.a_done_count, p.b_done_count, {columns}
FROM job_comparison_pairs p
LEFT JOIN job_comparisons c ON c.job_a = p.job_a AND c.job_b = p.job_b
WHERE p.job_a = %(a)s AND p.job_b = %(b)s
""").format(columns=AGGREGATE_OF_C)
# Inserts the pair, or replaces one stored for other counts, and returns a row; returns none when
# the pair is stored for these counts already. Two requests storing the same pair at once: the
# second waits for the first's commit on the primary key, then finds it there and stores nothing.
CLAIM_PAIR = """
INSERT INTO job_comparison_pairs (job_a, job_b, a_done_count, b_done_count)
VALUES (%(a)s, %(b)s, %(a_done)s, %(b_done)s)
ON CONFLICT (job_a, job_b) DO UPDATE SET a_done_count = EXCLUDED.a_done_count, b_done_count = EXCLUDED.b_done_count,
    computed_at = now()
    WHERE (job_comparison_pairs.a_done_count, job_comparison_pairs.b_done_count)
          <> (EXCLUDED.a_done_count, EXCLUDED.b_done_count)
RETURNING 1
"""
STORE_ROWS = sql.SQL("""
INSERT INTO job_comparisons (job_a, job_b, {columns})
SELECT %(a)s, %(b)s, r.* FROM unnest(%(true_label)s::smallint[], %(a_label)s::smallint[], %(b_label)s::smallint[],
                                    %(a_version)s::text[], %(b_version)s::text[], %(images)s::bigint[]) AS r
""").format(columns=sql.SQL(", ").join(map(sql.Identifier, AGGREGATE_COLUMNS)))

# (true label or statistics.UNLABELLED, A's prediction, B's prediction, A's version, B's version, images)
AggregateRow = tuple[int, int, int, str, str, int]


@dataclasses.dataclass(frozen=True)
class JobPair:
    """Both jobs (``store.get_job``'s rows) and their aggregate over the images both predicted."""

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
        job = store.get_job(conn, job_id)
        if job is None:
            raise UnknownJob(job_id)
        found[job_id] = job
    rows = stored_aggregate(conn, found[job_a], found[job_b])
    if rows is None:
        rows = computed_aggregate(conn, job_a, job_b)
    counts: collections.Counter[tuple[int, int, int]] = collections.Counter()
    versions_a, versions_b = set(), set()
    for true_label, predicted_a, predicted_b, version_a, version_b, images in rows:
        counts[true_label, predicted_a, predicted_b] += images
        versions_a.add(version_a)
        versions_b.add(version_b)
    triples = sorted((*key, images) for key, images in counts.items())
    return JobPair(found[job_a], found[job_b], triples, sorted(versions_a), sorted(versions_b))


def stored_aggregate(conn: Connection, job_a: dict[str, Any], job_b: dict[str, Any]) -> list[AggregateRow] | None:
    """The stored aggregate of two finished jobs (``get_job`` rows), or None: not stored, not for these counts,
    or unfinished."""
    if job_a["status"] != "done" or job_b["status"] != "done":
        return None
    rows = query(conn, STORED, {"a": job_a["id"], "b": job_b["id"]})
    if not rows or tuple(rows[0][:2]) != (job_a["done_count"], job_b["done_count"]):
        return None
    return [tuple(row[2:]) for row in rows if row[2] is not None]


def computed_aggregate(conn: Connection, job_a: int, job_b: int) -> list[AggregateRow]:
    """The aggregate from the predictions; stored when both jobs are finished, for the counts it was computed from."""
    rows = query(conn, COMPUTE, {"a": job_a, "b": job_b, "unlabelled": statistics.UNLABELLED})
    aggregate = [tuple(row[3:]) for row in rows if row[3] is not None]
    if rows and rows[0][0]:
        store_aggregate(conn, job_a, job_b, (rows[0][1], rows[0][2]), aggregate)
    return aggregate


def store_aggregate(
    conn: Connection, job_a: int, job_b: int, done_counts: tuple[int, int], aggregate: list[AggregateRow]
) -> None:
    """Store the pair's aggregate for these done counts, unless it is already (then nothing:
    concurrent requests agree)."""
    pair = {"a": job_a, "b": job_b, "a_done": done_counts[0], "b_done": done_counts[1]}
    columns = list(zip(*aggregate, strict=True)) or [()] * len(AGGREGATE_COLUMNS)
    with transaction(conn) as cursor:
        cursor.execute(CLAIM_PAIR, pair)
        if cursor.fetchone() is None:
            return
        cursor.execute(
            "DELETE FROM job_comparisons WHERE job_a = %(a)s AND job_b = %(b)s", pair
        )  # those of older counts
        cursor.execute(
            STORE_ROWS, pair | {name: list(values) for name, values in zip(AGGREGATE_COLUMNS, columns, strict=True)}
        )
