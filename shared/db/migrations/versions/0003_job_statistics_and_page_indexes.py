"""Per-job statistics and mistakes kept as results are stored, and indexes in the pages' orders.

- ``job_statistics``: per job, how many predictions of each (true label, predicted label), and
  how many of them under the low-confidence threshold (0.8). Written in the transaction that
  stores a batch, so a job page and ``producer report`` read ~100 rows instead of aggregating
  every prediction of the job. ``true_label`` -1 stands for an unlabelled image.
- ``job_mistakes``: the key, labels and confidence of each wrong prediction of a labelled
  image (about 1 % of predictions), in the same transaction, indexed newest first: the
  mistakes pages read one index range instead of joining every prediction to its image.
- partial index of predictions under 0.8 confidence, least sure first (the low-confidence page);
- ``input_data (true_label, id)`` replaces ``(true_label)``: browsing a digit, newest first;
- ``predictions (input_data_id, job_id)`` replaces ``(input_data_id)``: an image's latest prediction;
- ``jobs (kind, id)``: the jobs page of one kind, newest first; ``jobs (id) WHERE status <> 'done'``:
  the sweeper's unfinished jobs, however many uploads are done.

An existing database is upgraded in place: the statistics and mistakes of its jobs are
computed from their predictions here, in the migration's transaction.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
-- No foreign keys to jobs, as for predictions: store_results checks that its jobs exist, and
-- delete_upload_job removes a job's rows here with the job.
CREATE TABLE job_statistics (
    job_id          BIGINT NOT NULL,
    true_label      SMALLINT NOT NULL CHECK (true_label BETWEEN -1 AND 9),  -- -1: the image has no label
    predicted_label SMALLINT NOT NULL CHECK (predicted_label BETWEEN 0 AND 9),
    predictions     BIGINT NOT NULL CHECK (predictions >= 0),
    low_confidence  BIGINT NOT NULL CHECK (low_confidence >= 0),  -- of those, confidence < 0.8
    PRIMARY KEY (job_id, true_label, predicted_label)
);

CREATE TABLE job_mistakes (
    job_id          BIGINT NOT NULL,
    input_data_id   BIGINT NOT NULL,
    true_label      SMALLINT NOT NULL,
    predicted_label SMALLINT NOT NULL,
    confidence      REAL NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, input_data_id)
);
CREATE INDEX job_mistakes_newest_idx ON job_mistakes (created_at DESC, job_id DESC, input_data_id DESC);
CREATE INDEX job_mistakes_job_newest_idx ON job_mistakes (job_id, created_at DESC, input_data_id DESC);

CREATE INDEX predictions_low_confidence_idx ON predictions (confidence, job_id DESC, input_data_id DESC)
    WHERE confidence < 0.8;
CREATE INDEX predictions_image_job_idx ON predictions (input_data_id, job_id);
DROP INDEX IF EXISTS predictions_input_data_id_idx;
CREATE INDEX input_data_label_id_idx ON input_data (true_label, id);
DROP INDEX IF EXISTS input_data_true_label_idx;
CREATE INDEX jobs_kind_id_idx ON jobs (kind, id);
-- The sweeper's unfinished jobs, without reading every finished one (each upload is a job).
CREATE INDEX jobs_unfinished_idx ON jobs (id) WHERE status <> 'done';
"""

BACKFILL = """
INSERT INTO job_statistics (job_id, true_label, predicted_label, predictions, low_confidence)
SELECT p.job_id, COALESCE(d.true_label, -1), p.predicted_label, count(*), count(*) FILTER (WHERE p.confidence < 0.8)
FROM predictions p
JOIN jobs j ON j.id = p.job_id
LEFT JOIN input_data d ON d.id = p.input_data_id
GROUP BY 1, 2, 3;

INSERT INTO job_mistakes (job_id, input_data_id, true_label, predicted_label, confidence, created_at)
SELECT p.job_id, p.input_data_id, d.true_label, p.predicted_label, p.confidence, p.created_at
FROM predictions p
JOIN jobs j ON j.id = p.job_id
JOIN input_data d ON d.id = p.input_data_id
WHERE d.true_label <> p.predicted_label;
"""


def upgrade() -> None:
    op.execute(SCHEMA)
    op.execute(BACKFILL)
    op.execute("ANALYZE job_statistics; ANALYZE job_mistakes")


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
