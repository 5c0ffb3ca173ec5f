"""Registered model versions, their aliases, and which version serves each job.

A version's files are stored as bytes beside its card, so any worker, on any host, loads any
version from PostgreSQL. Names given by users (``production``, a version id) are resolved here:
an alias first, then a version.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from shared.db.connection import Connection, query, query_one, transaction

PRODUCTION = "production"


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What registration stores for one version: where each file came from and its bytes."""

    version: str
    name: str
    keras_file: str
    tflite_file: str
    int8_file: str | None
    keras_bytes: bytes
    tflite_bytes: bytes
    int8_bytes: bytes | None
    card: dict[str, Any]


# Everything about a version but its files' bytes; their sizes instead.
DESCRIBE_COLUMNS = sql.SQL("""
    m.version, m.name, m.keras_file, m.tflite_file, m.int8_file, m.card, m.created_at,
    length(m.keras_bytes) AS keras_size, length(m.tflite_bytes) AS tflite_size, length(m.int8_bytes) AS int8_size,
    ARRAY(SELECT a.alias FROM model_aliases a WHERE a.version = m.version ORDER BY a.alias) AS aliases
""")


def insert_model(conn: Connection, files: ModelFiles) -> bool:
    """Store a version; False when it was there already (the same bytes: nothing changes)."""
    row = query_one(
        conn,
        """
        INSERT INTO models (version, name, keras_file, tflite_file, int8_file,
                            keras_bytes, tflite_bytes, int8_bytes, card)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
        ON CONFLICT (version) DO NOTHING
        RETURNING version
        """,
        (
            files.version, files.name, files.keras_file, files.tflite_file, files.int8_file,
            files.keras_bytes, files.tflite_bytes, files.int8_bytes, json.dumps(files.card),
        ),
    )  # fmt: skip
    return row is not None


def model_exists(conn: Connection, version: str) -> bool:
    return query_one(conn, "SELECT 1 FROM models WHERE version = %s", (version,)) is not None


def resolve(conn: Connection, name: str) -> str | None:
    """The version an alias names, or ``name`` itself when it is a registered version; None otherwise."""
    row = query_one(conn, RESOLVED, {"name": name}, prepare=True)
    return row[0] if row else None


# The version %(name)s stands for: an alias first, then a registered version. Also part of the upload's insert.
RESOLVED = """
    SELECT version FROM (
        SELECT version, 0 AS rank FROM model_aliases WHERE alias = %(name)s
        UNION ALL
        SELECT version, 1 FROM models WHERE version = %(name)s
    ) found ORDER BY rank LIMIT 1
"""  # prepared where it runs: planning the lookup cost about as much as running it


def set_alias(conn: Connection, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version`` (which must exist); returns the version it named before, if any."""
    with transaction(conn) as cursor:
        cursor.execute("SELECT version FROM model_aliases WHERE alias = %s FOR UPDATE", (alias,))
        before = cursor.fetchone()
        cursor.execute(
            """
            INSERT INTO model_aliases (alias, version) VALUES (%s, %s)
            ON CONFLICT (alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()
            """,
            (alias, version),
        )
    return before[0] if before else None


def add_alias_if_missing(conn: Connection, alias: str, version: str) -> bool:
    """Point ``alias`` at ``version`` unless it names a version already: safe when several processes race."""
    row = query_one(
        conn,
        "INSERT INTO model_aliases (alias, version) VALUES (%s, %s) ON CONFLICT (alias) DO NOTHING RETURNING alias",
        (alias, version),
    )
    return row is not None


def remove_alias(conn: Connection, alias: str) -> str | None:
    """Remove an alias; returns the version it named, None when there was none."""
    row = query_one(conn, "DELETE FROM model_aliases WHERE alias = %s RETURNING version", (alias,))
    return row[0] if row else None


def list_models(conn: Connection) -> list[dict[str, Any]]:
    """Every version, newest first, with its aliases and its files' sizes (not their bytes)."""
    statement = sql.SQL("SELECT {} FROM models m ORDER BY m.created_at DESC, m.version").format(DESCRIBE_COLUMNS)
    return query(conn, statement, as_dicts=True)


def describe_model(conn: Connection, version: str) -> dict[str, Any] | None:
    """``list_models``' row of one version."""
    statement = sql.SQL("SELECT {} FROM models m WHERE m.version = %s").format(DESCRIBE_COLUMNS)
    return query_one(conn, statement, (version,), as_dicts=True)


def serving_files(conn: Connection, version: str, with_keras: bool = False) -> dict[str, Any] | None:
    """What a worker loads: the card and the LiteRT files (and the Keras file when asked); None if not registered."""
    row = query_one(
        conn,
        """
        SELECT card, tflite_bytes, int8_bytes, CASE WHEN %s THEN keras_bytes END AS keras_bytes
        FROM models WHERE version = %s
        """,
        (with_keras, version),
        as_dicts=True,
    )
    if row is None:
        return None
    return {key: bytes(value) if isinstance(value, memoryview) else value for key, value in row.items()}


def job_models(conn: Connection, job_ids: Sequence[int]) -> list[tuple[int, str | None, str | None]]:
    """(job id, version, shadow version) of each job that exists; a job with no version of its own gets production's."""
    return query(conn, JOB_MODELS, {"production": PRODUCTION, "jobs": list(job_ids)}, prepare=True)


# A job's serving version: its own, else production's now.
SERVING_VERSION = sql.SQL("COALESCE(j.model_version, (SELECT version FROM model_aliases WHERE alias = %(production)s))")

# Once per bulk batch: prepared.
JOB_MODELS = (
    sql.SQL("SELECT j.id, {version}, j.shadow_version FROM jobs j WHERE j.id = ANY(%(jobs)s::bigint[])")
    .format(version=SERVING_VERSION)
    .as_string()
)


@dataclasses.dataclass(frozen=True)
class UploadRow:
    job_id: int
    image_id: int
    version: str | None  # None: the job records none and nothing is aliased production
    shadow: str | None
    image_data: bytes | None  # None: there is no such image
    true_label: int | None


def upload_batch(conn: Connection, uploads: Sequence[tuple[int, int]]) -> list[UploadRow]:
    """What the upload consumer needs of a micro-batch of (job id, image id), in one round trip:
    each job's versions (``job_models``) and each image's bytes and label. No row for a job that does not exist."""
    params = {"production": PRODUCTION, "jobs": [job for job, _ in uploads], "images": [image for _, image in uploads]}
    rows = query(conn, UPLOAD_BATCH, params, prepare=True)
    return [
        UploadRow(job, image, version, shadow, bytes(data) if data is not None else None, label)
        for job, image, version, shadow, data, label in rows
    ]


# Once per micro-batch of uploads: prepared.
UPLOAD_BATCH = (
    sql.SQL("""
    SELECT u.job_id, u.image_id, {version}, j.shadow_version, d.image_data, d.true_label
    FROM unnest(%(jobs)s::bigint[], %(images)s::bigint[]) AS u (job_id, image_id)
    JOIN jobs j ON j.id = u.job_id
    LEFT JOIN input_data d ON d.id = u.image_id
""")
    .format(version=SERVING_VERSION)
    .as_string()
)
