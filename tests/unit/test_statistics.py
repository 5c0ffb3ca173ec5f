"""The worker's own count of a chunk's statistics and mistakes, against a plain count; no database."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shared import jobs
from shared.jobs.results import PredictionBatch


@pytest.mark.parametrize("seed", range(5))
def test_counted_statistics_equal_a_plain_count_over_several_jobs(seed):
    rng = np.random.default_rng(seed)
    n = 300
    batch = PredictionBatch.of(
        rng.integers(1, 10**12, n), rng.dirichlet(np.ones(10), size=n).astype(np.float32), rng.integers(-1, 10, n)
    )
    job_ids = rng.choice([3, 10**9 + 7, 2**40], n)  # a micro-batch of uploads holds several jobs
    counted = jobs.statistics.counted(job_ids, batch)

    keys = list(zip(job_ids.tolist(), batch.true_labels.tolist(), batch.labels.tolist(), strict=True))
    low = Counter(
        key
        for key, confidence in zip(keys, batch.confidences.tolist(), strict=True)
        if confidence < jobs.statistics.LOW_CONFIDENCE
    )
    expected = sorted((*key, count, low[key]) for key, count in Counter(keys).items())
    got = sorted(
        zip(
            counted["s_jobs"],
            counted["s_true"],
            counted["s_predicted"],
            counted["s_count"],
            counted["s_low"],
            strict=True,
        )
    )
    assert got == expected

    wrong = [
        (job, image, true, predicted)
        for (job, true, predicted), image in zip(keys, batch.image_ids.tolist(), strict=True)
    ]
    wrong = sorted(row for row in wrong if row[2] != jobs.statistics.UNLABELLED and row[2] != row[3])
    assert (
        sorted(zip(counted["m_jobs"], counted["m_ids"], counted["m_true"], counted["m_predicted"], strict=True))
        == wrong
    )
    assert dict(zip(counted["d_jobs"], counted["d_counts"], strict=True)) == dict(Counter(job_ids.tolist()))
