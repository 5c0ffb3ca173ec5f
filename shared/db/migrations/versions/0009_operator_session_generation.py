"""A session generation per operator: signing out ends every session the operator holds.

A session names its operator, a tag of the password hash and this generation
(``shared.operators.secrets.operator_for_session``); signing out raises it, so a copied cookie
stops working at the sign-out instead of at its expiry.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE operators ADD COLUMN session_generation BIGINT NOT NULL DEFAULT 0")


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
