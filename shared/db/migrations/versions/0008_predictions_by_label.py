"""An index of predictions by label and image, for /browse by prediction at a page number.

The page lists the images whose latest prediction is a digit, newest first. Without this index
it walked the newest images and looked up each one's latest prediction until enough matched:
about ten images read per match for one digit of ten, which grew with the table.
With it, the page reads only images once predicted that digit,
newest first, and checks that the latest prediction still says so (``queries.images_of_digit``).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX predictions_label_image_idx ON predictions (predicted_label, input_data_id DESC)")


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
