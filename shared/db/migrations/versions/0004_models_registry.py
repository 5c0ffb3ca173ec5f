"""The model registry: versions with their files and cards, aliases, jobs pinned to a version, shadow predictions.

- ``models``: one row per registered version (``<stem>-<12 hex of the .keras file's SHA-256>``),
  with the paths it was registered from and the files' bytes (Keras, float LiteRT, full-integer
  LiteRT; a few hundred KB each), so that a worker on any host loads any version from
  PostgreSQL, with no shared file system; and the model card as JSON.
- ``model_aliases``: a name (``production``, ``canary``, any other) for one version, moved by
  ``producer models alias``. New jobs resolve ``production`` when they are submitted.
- ``jobs.model_version`` is now the version that serves the job, resolved at submit; NULL means
  "whatever ``production`` names when a worker takes the job" (jobs of earlier releases that no
  model had started). ``jobs.shadow_version``: a second version that predicts the job too.
- ``shadow_predictions``: the shadow version's results, apart from ``predictions``, so a job's
  counters, statistics and pages, and every answer to an upload, come from its own version only.

An existing database is upgraded in place: a job that has predictions keeps the version it
recorded (the version its predictions recorded too: the release before wrote the same hash in
both), one that has none and is not done is served by ``production``. The models themselves are
registered after the migration, by ``producer init-db`` (``shared.training.registration``).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE models (
    version         TEXT PRIMARY KEY CHECK (length(version) BETWEEN 1 AND 200),
    name            TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Where the files were registered from (informational): the bytes below are what workers load.
    keras_file      TEXT NOT NULL,
    tflite_file     TEXT NOT NULL,
    int8_file       TEXT,
    keras_bytes     BYTEA NOT NULL,
    tflite_bytes    BYTEA NOT NULL,
    int8_bytes      BYTEA,
    card            JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((int8_file IS NULL) = (int8_bytes IS NULL))
);

CREATE TABLE model_aliases (
    alias           TEXT PRIMARY KEY CHECK (alias ~ '^[a-z][a-z0-9_-]{0,39}$'),
    version         TEXT NOT NULL REFERENCES models (version),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE jobs ALTER COLUMN model_version DROP NOT NULL;
ALTER TABLE jobs ADD COLUMN shadow_version TEXT;

-- The rows of predictions (its columns, defaults and checks; none of its page indexes), never
-- counted in a job's counters or statistics. No foreign keys, as there.
CREATE TABLE shadow_predictions (LIKE predictions INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE shadow_predictions ADD PRIMARY KEY (job_id, input_data_id);
"""

# Jobs of earlier releases that no model started: served by production when a worker takes them.
UNSTARTED_JOBS_TO_PRODUCTION = """
UPDATE jobs j SET model_version = NULL
WHERE j.status <> 'done' AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = j.id)
"""


def upgrade() -> None:
    op.execute(SCHEMA)
    op.execute(UNSTARTED_JOBS_TO_PRODUCTION)


def downgrade() -> None:
    raise NotImplementedError("mnist-queue migrates forward only: restore a backup to go back")
