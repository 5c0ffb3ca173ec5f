"""Finding the webhooks nobody is delivering: an index of announced job ends that have a URL.

A job's end is claimed once (``jobs.announced_at``), then its claimer sends the delivery task. A claimer
that dies between the claim's commit and the send, or a Redis that loses the message, leaves the end
announced and never delivered. The sweeper (``worker/sweeper.py``) looks every round for such ends
among those announced recently (``lifecycle_store.undelivered_ends``); this index keeps that look to the
jobs with a URL announced in that window, however many jobs (an upload is one) the table holds.
No grants: the workers' role reads every table already (shared/db/grants.py).

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX jobs_webhook_announced_idx ON jobs (announced_at) WHERE callback_url IS NOT NULL")


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
