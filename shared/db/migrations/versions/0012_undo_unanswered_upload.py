"""Undoing an upload that Redis refused is one function, so the web role needs no DELETE.

``mnistq_undo_upload`` removes an upload job and its image only while the job has no answer (no
prediction, no failure): the one thing the web ever deleted. It runs with its owner's rights
(SECURITY DEFINER, its search_path pinned), so the web role is granted EXECUTE on it
(shared/db/grants.py) instead of DELETE on jobs, input_data, predictions and the statistics. A
compromised web process can at most withdraw an upload still waiting for its answer.

The job row is locked first: a worker storing that job's answer meanwhile waits, then finds the job
gone and stores nothing (``mnistq_require_jobs``, migration 0007). A job with an answer is kept,
and the function says so by returning false.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION mnistq_undo_upload(undone_job BIGINT, undone_image BIGINT) RETURNS BOOLEAN
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
        BEGIN
            PERFORM FROM jobs
            WHERE id = undone_job AND kind = 'upload' AND image_ids = ARRAY[undone_image]
              AND done_count = 0 AND failed_count = 0
            FOR UPDATE;
            IF NOT FOUND OR EXISTS (SELECT FROM predictions WHERE job_id = undone_job) THEN
                RETURN FALSE;
            END IF;
            DELETE FROM job_comparison_pairs WHERE job_a = undone_job OR job_b = undone_job;
            DELETE FROM jobs WHERE id = undone_job;  -- its failures, attempts and batches cascade
            DELETE FROM input_data WHERE id = undone_image AND dataset_split = 'upload';
            RETURN TRUE;
        END
        $$;
        -- Only those granted it by shared/db/grants.py (and the app role, by deploy/postgres-init) may call it.
        REVOKE EXECUTE ON FUNCTION mnistq_undo_upload(BIGINT, BIGINT) FROM PUBLIC;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
