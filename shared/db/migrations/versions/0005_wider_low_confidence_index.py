"""The low-confidence index covers every threshold a model card may choose, not only 0.8.

The low-confidence page's default threshold now comes from the production model's card
(the share of images that catches most errors, measured on the validation split), and for
a calibrated model that lands between 0.6 and 0.98. The partial index of 0003 served only
thresholds up to 0.8; above that the page scanned every prediction (0.2-0.6 s at 1M). Up to
0.99 it still holds only the few per cent of predictions a model is unsure of, so its cost
when storing a batch stays small; thresholds above 0.99 are a full scan, and say so.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS predictions_low_confidence_idx;
        CREATE INDEX predictions_low_confidence_idx ON predictions (confidence, job_id DESC, input_data_id DESC)
            WHERE confidence < 0.99;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
