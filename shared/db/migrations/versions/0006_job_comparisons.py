"""Stored comparisons of finished jobs: ``producer compare``, ``/compare`` and ``GET /api/compare`` read ~100 rows.

Comparing two jobs joins every prediction they share (2-5 s at a million); a finished job's
predictions do not change, so the aggregate of two finished jobs is stored the first time it
is computed (``shared/jobs/comparison_store.py`` says when it is read back and why that is safe):

- ``job_comparison_pairs``: one row per ordered pair (A, B) whose aggregate is stored, with each
  job's ``done_count`` when it was computed; a pair with no image in common has this row alone.
- ``job_comparisons``: the aggregate itself, images per (true label, A's prediction, B's
  prediction, A's model version, B's model version); ``true_label`` -1 stands for an unlabelled image.

No foreign keys to jobs, as for predictions and job_statistics: delete_upload_job removes a job's
rows here with the job. The aggregate's rows go with their pair (ON DELETE CASCADE).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE job_comparison_pairs (
    job_a        BIGINT NOT NULL,
    job_b        BIGINT NOT NULL,
    a_done_count INTEGER NOT NULL,  -- the jobs' done_count when the aggregate was computed
    b_done_count INTEGER NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_a, job_b)
);

CREATE TABLE job_comparisons (
    job_a      BIGINT NOT NULL,
    job_b      BIGINT NOT NULL,
    true_label SMALLINT NOT NULL CHECK (true_label BETWEEN -1 AND 9),  -- -1: the image has no label
    a_label    SMALLINT NOT NULL CHECK (a_label BETWEEN 0 AND 9),
    b_label    SMALLINT NOT NULL CHECK (b_label BETWEEN 0 AND 9),
    a_version  TEXT NOT NULL,
    b_version  TEXT NOT NULL,
    images     BIGINT NOT NULL CHECK (images > 0),
    PRIMARY KEY (job_a, job_b, true_label, a_label, b_label, a_version, b_version),
    FOREIGN KEY (job_a, job_b) REFERENCES job_comparison_pairs (job_a, job_b) ON DELETE CASCADE
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
