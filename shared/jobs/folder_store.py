"""The jobs ``producer run`` makes for a folder, found again by the folder's path so that a run resumes."""

from __future__ import annotations

from shared.db.connection import Connection, query


def folder_job_ids(conn: Connection, folder: str) -> list[int]:
    """The jobs ``producer run`` made for ``folder`` (recorded in their selection), oldest first."""
    return [row[0] for row in query(conn, "SELECT id FROM jobs WHERE selection->>'folder' = %s ORDER BY id", (folder,))]


def folder_images_without_job(conn: Connection, folder: str) -> list[int]:
    """Stored images under ``folder`` (a resolved path) that none of its ``producer run`` jobs covers:
    what a run stopped between storing and submitting left, or what a plain ingest stored."""
    prefix = folder.rstrip("/") + "/"
    rows = query(
        conn,
        """
        SELECT id FROM input_data WHERE source ~>=~ %(low)s AND source ~<~ %(high)s
        EXCEPT
        SELECT unnest(image_ids) FROM jobs WHERE selection->>'folder' = %(folder)s
        ORDER BY 1
        """,
        {"low": prefix, "high": prefix[:-1] + "0", "folder": folder},
    )
    return [row[0] for row in rows]
