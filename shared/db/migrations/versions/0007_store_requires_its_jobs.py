"""A function that fails the store's statement when a job of its batch does not exist.

Predictions, statistics and mistakes have no foreign key to jobs (0001, 0003). The store used
to check in Python, after its statement, that every job of the batch was advanced, and roll
its transaction back if not. A micro-batch of uploads is now one statement that is its own
transaction (``shared/jobs/results.py``), so the check runs inside it: this function raises, with
SQLSTATE foreign_key_violation, and the whole statement is undone. Plain SQL cannot raise, and a
volatile function is never evaluated while the statement is planned.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION mnistq_require_jobs(wanted bigint, advanced bigint) RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            IF advanced < wanted THEN
                RAISE EXCEPTION 'a job of the batch does not exist (% of % found)', advanced, wanted
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN advanced;
        END
        $$;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
