"""The schema of mnist-queue before migrations: input_data, jobs, predictions, batch_attempts, job_failures.

Every statement is ``IF NOT EXISTS``, so a database created by that release (with
``create_schema``) is recorded as being at this revision without a change to its tables.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS input_data (
    id              BIGSERIAL PRIMARY KEY,
    image_data      BYTEA NOT NULL,
    true_label      SMALLINT CHECK (true_label BETWEEN 0 AND 9),
    image_shape     INTEGER[] NOT NULL,
    dataset_split   TEXT NOT NULL CHECK (dataset_split IN ('train', 'test', 'upload')),
    image_index     INTEGER,
    source          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (dataset_split, image_index)
);
CREATE INDEX IF NOT EXISTS input_data_true_label_idx ON input_data (true_label);
CREATE UNIQUE INDEX IF NOT EXISTS input_data_source_key ON input_data (source) WHERE source IS NOT NULL;

CREATE TABLE IF NOT EXISTS jobs (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL DEFAULT 'bulk' CHECK (kind IN ('bulk', 'upload')),
    model_version   TEXT NOT NULL,
    selection       JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Which images the job covers, so unfinished work is found in PostgreSQL, not Redis.
    -- One array, not a row per image: writing 10,000 rows cost more than a third of the
    -- database's time for a job. No foreign key: an unknown ID is recorded as a failure.
    image_ids       BIGINT[] NOT NULL,
    total_images    INTEGER NOT NULL CHECK (total_images >= 0),
    done_count      INTEGER NOT NULL DEFAULT 0,
    failed_count    INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    progressed_at   TIMESTAMPTZ  -- last stored result or resume: how the sweeper tells a stalled job
);

-- The hot table: every image of every job lands here. It has no foreign keys: their per-row
-- checks (a lookup and a row lock in input_data and in jobs) were more than half of the
-- database's time per prediction. store_results keeps the same promises per batch (the
-- job must exist; the images were just read from input_data), and delete_upload_job removes
-- a job's predictions with the job.
CREATE TABLE IF NOT EXISTS predictions (
    job_id                   BIGINT NOT NULL,
    input_data_id            BIGINT NOT NULL,
    model_version            TEXT NOT NULL,
    predicted_label          SMALLINT NOT NULL CHECK (predicted_label BETWEEN 0 AND 9),
    confidence               REAL NOT NULL,
    prediction_probabilities BYTEA NOT NULL,  -- ten little-endian float32
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, input_data_id)
);
CREATE INDEX IF NOT EXISTS predictions_input_data_id_idx ON predictions (input_data_id);

-- How often each batch of a job was started: a batch that keeps killing its worker is split,
-- and a single image that still does is recorded as failed instead of looping forever.
CREATE TABLE IF NOT EXISTS batch_attempts (
    job_id          BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_image_id  BIGINT NOT NULL,
    batch_size      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, first_image_id, batch_size)
);

CREATE TABLE IF NOT EXISTS job_failures (
    job_id          BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    input_data_id   BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, input_data_id)
);
"""


def upgrade() -> None:
    # CREATE TABLE IF NOT EXISTS would leave a table of an older layout as it was: say so plainly.
    if op.get_bind().exec_driver_sql("SELECT to_regclass('job_items') IS NOT NULL").scalar():
        raise RuntimeError(
            "this database has the schema of an earlier mnist-queue (table job_items); start from an empty database"
        )
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
