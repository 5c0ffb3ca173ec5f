"""Per-job statistics: label x prediction counts, low-confidence counts and the list of mistakes.

Maintained by ``results.store_results`` in the statement that advances the job's counters,
so they change in the same transaction as the predictions they count: a redelivered batch
adds nothing (only rows that were really inserted are counted) and a rolled-back one
nothing either. Reports and pages read ~100 rows per job here instead of aggregating every
prediction; ``recount`` aggregates the predictions directly, for checking that they agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.db.connection import Connection, query, query_one_required

# Predictions under this confidence are counted as low-confidence (reports' default threshold).
LOW_CONFIDENCE = 0.8
UNLABELLED = -1  # job_statistics.true_label of an image without a label

# Data-modifying CTEs over ``batch`` (job_id, input_data_id, predicted_label, confidence,
# true_label): the newly stored predictions of this statement, one row each. Inserted in key
# order, so that two workers storing chunks of one job take the row locks in the same order.
MAINTAIN = f"""
statistics AS (
    INSERT INTO job_statistics (job_id, true_label, predicted_label, predictions, low_confidence)
    SELECT job_id, COALESCE(true_label, {UNLABELLED}), predicted_label, count(*),
           count(*) FILTER (WHERE confidence < {LOW_CONFIDENCE})
    FROM batch GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (job_id, true_label, predicted_label) DO UPDATE SET
        predictions = job_statistics.predictions + EXCLUDED.predictions,
        low_confidence = job_statistics.low_confidence + EXCLUDED.low_confidence
), mistakes AS (
    INSERT INTO job_mistakes (job_id, input_data_id, true_label, predicted_label, confidence)
    SELECT job_id, input_data_id, true_label, predicted_label, confidence
    FROM batch WHERE true_label <> predicted_label ORDER BY 1, 2
    ON CONFLICT (job_id, input_data_id) DO NOTHING
)"""


# The same, counted by the worker (``counted``): its rows arrive as arrays, a few per chunk.
ADD_COUNTED = """
statistics AS (
    INSERT INTO job_statistics (job_id, true_label, predicted_label, predictions, low_confidence)
    SELECT * FROM unnest(%(s_jobs)b::bigint[], %(s_true)b::smallint[], %(s_predicted)b::smallint[],
                         %(s_count)b::bigint[], %(s_low)b::bigint[])
    ORDER BY 1, 2, 3
    ON CONFLICT (job_id, true_label, predicted_label) DO UPDATE SET
        predictions = job_statistics.predictions + EXCLUDED.predictions,
        low_confidence = job_statistics.low_confidence + EXCLUDED.low_confidence
), mistakes AS (
    INSERT INTO job_mistakes (job_id, input_data_id, true_label, predicted_label, confidence)
    SELECT * FROM unnest(%(m_jobs)b::bigint[], %(m_ids)b::bigint[], %(m_true)b::smallint[], %(m_predicted)b::smallint[],
                         %(m_confidence)b::real[])
    ORDER BY 1, 2
    ON CONFLICT (job_id, input_data_id) DO NOTHING
)"""
# ADD_COUNTED's parameters, and the store's per-job counts: all empty for a batch without predictions.
COUNTED_PARAMETERS = (
    "s_jobs", "s_true", "s_predicted", "s_count", "s_low",
    "m_jobs", "m_ids", "m_true", "m_predicted", "m_confidence",
    "d_jobs", "d_counts",
)  # fmt: skip


def counted(prediction_jobs: np.ndarray, predictions: Any) -> dict[str, list]:
    """A chunk's statistics, mistakes and per-job counts, counted with numpy: the parameters of ``ADD_COUNTED``
    and of the store's ``d_jobs``/``d_counts``. ``predictions`` is a ``results.PredictionBatch`` with true labels."""
    true, predicted, confidences = predictions.true_labels.astype(np.int64), predictions.labels, predictions.confidences
    # One integer per (job, true label, predicted label): 1-D unique is a sort of n integers.
    pair = (true + 1) * 10 + predicted  # 0..109
    keys, inverse, counts = np.unique(prediction_jobs * 128 + pair, return_inverse=True, return_counts=True)
    jobs, pairs = np.divmod(keys, 128)
    trues, predicteds = pairs // 10 - 1, pairs % 10
    low = np.bincount(inverse, weights=confidences < LOW_CONFIDENCE, minlength=len(counts))
    wrong = (true != UNLABELLED) & (true != predicted)
    done_jobs, done_counts = np.unique(prediction_jobs, return_counts=True)
    return {
        "s_jobs": jobs.tolist(), "s_true": trues.tolist(), "s_predicted": predicteds.tolist(),
        "s_count": counts.tolist(), "s_low": low.astype(np.int64).tolist(),
        "m_jobs": prediction_jobs[wrong].tolist(), "m_ids": predictions.image_ids[wrong].tolist(),
        "m_true": true[wrong].tolist(), "m_predicted": predicted[wrong].tolist(),
        "m_confidence": confidences[wrong].tolist(),
        "d_jobs": done_jobs.tolist(), "d_counts": done_counts.tolist(),
    }  # fmt: skip


def counted_nothing() -> dict[str, list]:
    return {name: [] for name in COUNTED_PARAMETERS}


def label_pair_counts(conn: Connection, job_id: int) -> list[tuple[int, int, int]]:
    """(true label, predicted label, count) over a job's labelled predictions."""
    return query(
        conn,
        "SELECT true_label, predicted_label, predictions FROM job_statistics"
        " WHERE job_id = %s AND true_label <> %s AND predictions > 0",
        (job_id, UNLABELLED),
    )


def low_confidence_count(conn: Connection, job_id: int) -> int:
    """A job's predictions with confidence under ``LOW_CONFIDENCE``."""
    counted = "SELECT COALESCE(sum(low_confidence), 0) FROM job_statistics WHERE job_id = %s"
    return int(query_one_required(conn, counted, (job_id,))[0])


def predictions_with_label(conn: Connection, digit: int) -> int:
    """Predictions of ``digit`` over all jobs: a bound on the images whose latest prediction is ``digit``."""
    counted = "SELECT COALESCE(sum(predictions), 0) FROM job_statistics WHERE predicted_label = %s"
    return int(query_one_required(conn, counted, (digit,))[0])


def recount(conn: Connection, job_id: int) -> dict[str, Any]:
    """A job's statistics, aggregated directly from its predictions and from the tables above, to compare."""
    stored = query(
        conn,
        "SELECT true_label, predicted_label, predictions, low_confidence FROM job_statistics"
        " WHERE job_id = %s AND predictions > 0",
        (job_id,),
    )
    direct = query(
        conn,
        """
        SELECT COALESCE(d.true_label, %s), p.predicted_label, count(*), count(*) FILTER (WHERE p.confidence < %s)
        FROM predictions p LEFT JOIN input_data d ON d.id = p.input_data_id
        WHERE p.job_id = %s GROUP BY 1, 2
        """,
        (UNLABELLED, LOW_CONFIDENCE, job_id),
    )
    mistakes = query_one_required(
        conn,
        """
        SELECT (SELECT count(*) FROM job_mistakes WHERE job_id = %(job)s),
               (SELECT count(*) FROM predictions p JOIN input_data d ON d.id = p.input_data_id
                WHERE p.job_id = %(job)s AND d.true_label <> p.predicted_label)
        """,
        {"job": job_id},
    )
    return {
        "statistics": sorted(map(tuple, stored)),
        "aggregated": sorted(map(tuple, direct)),
        "mistakes": mistakes[0],
        "mistakes_aggregated": mistakes[1],
    }
