"""Bulk loading and sizing, for the scale benchmark: many image rows in one binary COPY, table sizes.

Not used by the services. Kept to statements that every schema of mnist-queue has, so the
same benchmark measures the release before a migration and after it.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from shared.db.connection import Connection, query, query_one_required, single_statement

IMAGE_COPY_COLUMNS = ("image_data", "true_label", "image_shape", "dataset_split", "image_index")
SIZED_TABLES = ("input_data", "predictions", "jobs", "job_failures", "job_statistics", "job_mistakes", "job_images")


IMAGE_TYPES = ("bytea", "smallint", "integer[]", "text", "integer")
COPY_IMAGES = (
    sql.SQL("COPY input_data ({}) FROM STDIN (FORMAT BINARY)")
    .format(sql.SQL(", ").join(map(sql.Identifier, IMAGE_COPY_COLUMNS)))
    .as_string()
)


def copy_image_rows(conn: Connection, rows: Iterable[tuple[bytes, int | None, list[int], str, int | None]]) -> int:
    """Rows of ``IMAGE_COPY_COLUMNS`` into ``input_data`` by one binary COPY; returns how many."""
    with single_statement(conn) as cursor:
        with cursor.copy(COPY_IMAGES) as copy:
            copy.set_types(IMAGE_TYPES)
            for row in rows:
                copy.write_row(row)
        return cursor.rowcount


def vacuum_analyze(conn: Connection) -> None:
    """Fresh planner statistics and visibility map after a bulk load (needs an autocommit connection)."""
    query(conn, "VACUUM ANALYZE")


def row_counts(conn: Connection) -> tuple[int, int, int]:
    """(stored images, predictions, jobs)."""
    counts = "SELECT (SELECT count(*) FROM input_data), (SELECT count(*) FROM predictions), (SELECT count(*) FROM jobs)"
    return tuple(query_one_required(conn, counts))


def table_bytes(conn: Connection) -> dict[str, int]:
    """Bytes on disk of each table that exists, indexes and TOAST included."""
    rows = query(
        conn,
        "SELECT name, pg_total_relation_size(to_regclass(name)) FROM unnest(%s::text[]) AS name"
        " WHERE to_regclass(name) IS NOT NULL",
        (list(SIZED_TABLES),),
    )
    return dict(rows)


def largest_jobs(conn: Connection, kind: str, limit: int) -> list[int]:
    """Ids of the jobs with the most stored results, most first."""
    return [
        row[0]
        for row in query(
            conn, "SELECT id FROM jobs WHERE kind = %s ORDER BY done_count DESC, id LIMIT %s", (kind, limit)
        )
    ]


def delete_ingested(conn: Connection, below_index: int) -> int:
    """Remove what ``producer ingest`` stored in a measurement (real MNIST indexes, files by path),
    so sizes stay exact."""
    rows = query(
        conn,
        """
        DELETE FROM input_data d
        WHERE (d.source IS NOT NULL OR d.image_index < %s)
          AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.input_data_id = d.id)
        RETURNING id
        """,
        (below_index,),
    )
    return len(rows)
