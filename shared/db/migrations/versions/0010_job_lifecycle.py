"""Job lifecycle (issue #27): explicit end states, cancel, fair share in slices, priorities, webhooks.

- ``jobs.status`` may also be ``failed`` (the job ended and not one of its images could be predicted)
  and ``cancelled``, with ``cancelled_at`` and ``cancelled_by``.
- ``jobs.priority`` (high, normal, low) orders the broker's messages; ``jobs.batch_size`` and
  ``jobs.enqueued_batches`` feed the broker a job's batches a few at a time (``shared/jobs/fair_share.py``):
  ``job_batches`` holds each batch's image IDs, so taking the next one reads one small row instead of
  the job's whole array (for a big job, more than the batch's own database work).
  A job of a release before this one has ``enqueued_batches`` NULL: every batch was sent at submit.
- ``jobs.callback_url`` and ``webhook_deliveries``: every attempt to tell the URL how the job ended.
- ``jobs.announced_at``: when the job's end was counted and its webhook sent, claimed once. Added with
  the migration's time as default, so the jobs already there (ended long ago, or still running under
  the old code) are not announced now; then the default goes, and new jobs start unannounced.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled'));
ALTER TABLE jobs
    ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    ADD COLUMN batch_size INTEGER CHECK (batch_size > 0),
    ADD COLUMN enqueued_batches INTEGER CHECK (enqueued_batches >= 0),
    ADD COLUMN callback_url TEXT,
    ADD COLUMN cancelled_at TIMESTAMPTZ,
    ADD COLUMN cancelled_by TEXT,
    ADD COLUMN announced_at TIMESTAMPTZ DEFAULT now();
ALTER TABLE jobs ALTER COLUMN announced_at DROP DEFAULT;

-- The sweeper's: jobs unfinished (cancelled ones are not) ...
DROP INDEX IF EXISTS jobs_unfinished_idx;
CREATE INDEX jobs_unfinished_idx ON jobs (id) WHERE status IN ('queued', 'running');
-- ... and bulk jobs whose end is not announced yet (the running ones, and an end a dead worker did not announce).
CREATE INDEX jobs_unannounced_idx ON jobs (id) WHERE announced_at IS NULL AND kind = 'bulk';

CREATE TABLE job_batches (
    job_id    BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    batch     INTEGER NOT NULL CHECK (batch >= 0),
    image_ids BIGINT[] NOT NULL,
    PRIMARY KEY (job_id, batch)
);

CREATE TABLE webhook_deliveries (
    job_id       BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    event        TEXT NOT NULL,  -- the end state announced: done, failed or cancelled
    url          TEXT NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code  INTEGER,  -- NULL: no answer (refused, timed out)
    error        TEXT,
    delivered    BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
