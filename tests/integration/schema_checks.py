"""What a database's schema is, as PostgreSQL's catalogue says: for comparing two databases, or one before and after."""

from __future__ import annotations

from pathlib import Path

from shared.db.connection import Connection, query

# Every table of the schema: the columns that order its rows, and which rows belong to one job.
TABLES = {
    "input_data": ("id", "id = ANY(SELECT unnest(image_ids) FROM jobs WHERE id = %(job)s)"),
    "jobs": ("id", "id = %(job)s"),
    "predictions": ("job_id, input_data_id", "job_id = %(job)s"),
    "batch_attempts": ("job_id, first_image_id, batch_size", "job_id = %(job)s"),
    "job_failures": ("job_id, input_data_id", "job_id = %(job)s"),
}
# The release before migrations, as its create_schema made it (the SQL of shared/db.py at 75c7d71).
PREVIOUS_RELEASE_SCHEMA = Path(__file__).with_name("previous_release_schema.sql")


def schema_snapshot(conn: Connection) -> dict[str, list[tuple]]:
    """Tables with their columns, constraints and indexes in the public schema, each sorted."""
    return {
        "columns": query(
            conn,
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 3",
        ),
        "constraints": query(
            conn,
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public' ORDER BY 1, 2",
        ),
        "indexes": query(
            conn, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"
        ),
    }


def table_columns(conn: Connection) -> dict[str, str]:
    """Each table's columns as a select list: what a later migration adds can then be left out of a comparison."""
    rows = query(
        conn,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY ordinal_position",
    )
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return {table: ", ".join(names) for table, names in columns.items()}


def every_row(
    conn: Connection, job_id: int | None = None, columns: dict[str, str] | None = None
) -> dict[str, list[tuple]]:
    """Every row of every table, or only those of ``job_id`` (its images, itself, its results).

    ``columns`` (from ``table_columns``) limits each table to the columns it had then.
    """
    columns = columns or {}
    return {
        table: query(
            conn,
            f"SELECT {columns.get(table, '*')} FROM {table} WHERE %(job)s::bigint IS NULL OR {of_job} ORDER BY {order}",  # noqa: S608
            {"job": job_id},
        )
        for table, (order, of_job) in TABLES.items()
    }


def create_previous_release_schema(conn: Connection) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(PREVIOUS_RELEASE_SCHEMA.read_text())
