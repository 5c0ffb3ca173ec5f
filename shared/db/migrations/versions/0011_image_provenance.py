"""Image provenance: which preprocessing made each stored image; finding a folder's stored paths fast.

``preprocess_version`` is NULL for images stored before it was recorded (and for MNIST splits,
which are not preprocessed). The pattern index serves ``source`` prefix ranges (``~>=~``/``~<~``):
re-ingesting a folder reads its known paths in one index scan, whatever the database's collation.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE input_data ADD COLUMN preprocess_version INTEGER")
    op.execute(
        "CREATE INDEX input_data_source_prefix_idx ON input_data (source text_pattern_ops) WHERE source IS NOT NULL"
    )


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
