"""Operators (signed-in users of the bulk and insight pages), their API tokens, and upload tokens.

An upload's result is reachable by anyone who holds its unguessable token, and only by them;
the numeric job id stays internal. Tokens are high-entropy random values, so only their
SHA-256 is stored; operators' passwords are stored as argon2 hashes.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE operators (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    password_hash   TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id              BIGSERIAL PRIMARY KEY,
    operator_id     BIGINT NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    token_hash      BYTEA NOT NULL UNIQUE,  -- SHA-256 of the token; the token itself is shown once and never stored
    label           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at    TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ
);

-- Upload jobs: how an anonymous client reads its own result. Uploads of earlier releases have
-- none and are reachable by operators only.
ALTER TABLE jobs ADD COLUMN public_token TEXT UNIQUE;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
