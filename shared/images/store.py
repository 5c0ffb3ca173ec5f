"""Stored images (``input_data``): insert, fetch by id, select by filters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from psycopg import sql

from shared.db.connection import Connection, copy_in_statement, query, query_one, transaction


class ImageRow(NamedTuple):
    image_data: bytes
    true_label: int | None
    image_shape: list[int]
    dataset_split: str
    image_index: int | None
    source: str | None


INSERT_IMAGE = """
INSERT INTO input_data (image_data, true_label, image_shape, dataset_split, image_index, source)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id
"""


def insert_images(conn: Connection, rows: Sequence[ImageRow]) -> list[int]:
    """Insert images; rows already stored (same split and index, or same source) are skipped.

    ``executemany`` pipelines the rows (no round trip per row); each row's RETURNING is a result set of its own."""
    inserted: list[int] = []
    with transaction(conn) as cursor:
        cursor.executemany(INSERT_IMAGE, [tuple(row) for row in rows], returning=True)
        while True:
            inserted.extend(row[0] for row in cursor.fetchall())
            if not cursor.nextset():
                break
    return inserted


# Prepared, with binary results: the bytea arrives as its bytes, where text results send it as hex.
SELECT_IMAGES = "SELECT id, image_data FROM input_data WHERE id = ANY(%(ids)b::bigint[])"
SELECT_IMAGES_AND_LABELS = "SELECT id, image_data, true_label FROM input_data WHERE id = ANY(%(ids)b::bigint[])"


def fetch_images(conn: Connection, image_ids: Sequence[int]) -> dict[int, bytes]:
    """Image bytes by ID in one query; missing IDs are simply absent from the result."""
    return dict(query(conn, SELECT_IMAGES, {"ids": [int(image_id) for image_id in image_ids]}, binary=True))


def fetch_images_and_labels(conn: Connection, image_ids: Sequence[int]) -> tuple[dict[int, bytes], dict[int, int]]:
    """``fetch_images`` with the true labels of the labelled ones, in the same query: the worker
    counts a chunk's statistics itself, so storing them costs PostgreSQL a handful of rows."""
    rows = query(
        conn, SELECT_IMAGES_AND_LABELS, {"ids": [int(image_id) for image_id in image_ids]}, prepare=True, binary=True
    )
    return {row[0]: row[1] for row in rows}, {row[0]: row[2] for row in rows if row[2] is not None}


def missing_image_ids(conn: Connection, image_ids: Sequence[int]) -> list[int]:
    """Those of ``image_ids`` that no stored image has, ascending; [] when every one is stored. One query."""
    rows = query(
        conn,
        """
        SELECT wanted.id FROM unnest(%(ids)s::bigint[]) AS wanted (id)
        EXCEPT SELECT d.id FROM input_data d WHERE d.id = ANY(%(ids)s::bigint[])
        ORDER BY 1
        """,
        {"ids": [int(image_id) for image_id in image_ids]},
    )
    return [row[0] for row in rows]


def get_image_data(conn: Connection, image_id: int) -> bytes | None:
    """One stored image's bytes, or None when there is no such image."""
    row = query_one(conn, "SELECT image_data FROM input_data WHERE id = %s", (image_id,))
    return bytes(row[0]) if row else None


# Which stored images (``d``) a selection covers; parameters split, label and model (unpredicted by), each NULL for any.
SELECTION_FILTER = sql.SQL("""
    (%(split)s::text IS NULL OR d.dataset_split = %(split)s)
    AND (%(label)s::smallint IS NULL OR d.true_label = %(label)s)
    AND (%(model)s::text IS NULL OR NOT EXISTS (
        SELECT 1 FROM predictions p WHERE p.input_data_id = d.id AND p.model_version = %(model)s))
""")


def select_image_ids(
    conn: Connection,
    split: str | None = None,
    label: int | None = None,
    limit: int | None = None,
    unpredicted_by: str | None = None,
) -> list[int]:
    """IDs of stored images matching every given filter, oldest first."""
    rows = query(
        conn,
        sql.SQL("SELECT d.id FROM input_data d WHERE {filter} ORDER BY d.id LIMIT %(limit)s").format(
            filter=SELECTION_FILTER
        ),
        {"split": split, "label": label, "model": unpredicted_by, "limit": limit},
    )
    return [row[0] for row in rows]


# A folder's stored paths in byte order (``~<~``, the order of migration 0011's pattern index and of
# Python's str), so re-ingest merges them with its sorted walk and never holds the list.
STORED_SOURCES = """
SELECT source FROM input_data WHERE source ~>=~ %(low)s AND source ~<~ %(high)s ORDER BY source USING ~<~
"""


def stored_sources(conn: Connection, prefix: str) -> Iterator[str]:
    """The stored ``source`` paths that start with ``prefix`` (ending in "/"), ascending, read from a
    server-side cursor: one query for a whole folder, in constant memory. ``conn`` is the caller's
    for this read alone: the cursor's transaction stays open while it is iterated."""
    high = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    with conn.transaction(), conn.cursor(name="stored_sources") as cursor:
        cursor.itersize = 5000
        cursor.execute(STORED_SOURCES, {"low": prefix, "high": high})
        for (source,) in cursor:
            yield source


IMAGE_ROW_COLUMNS = (*ImageRow._fields, "preprocess_version")
IMAGE_ROW_TYPES = ("bytea", "smallint", "integer[]", "text", "integer", "text", "integer")
STAGE_IMAGES = """
CREATE TEMP TABLE IF NOT EXISTS staged_images (
    image_data bytea, true_label smallint, image_shape integer[], dataset_split text, image_index integer, source text,
    preprocess_version integer
) ON COMMIT DELETE ROWS
"""
COPY_STAGED_IMAGES = copy_in_statement("staged_images", IMAGE_ROW_COLUMNS)
INSERT_STAGED_IMAGES = (
    sql.SQL(
        "INSERT INTO input_data ({columns}) SELECT {columns} FROM staged_images ON CONFLICT DO NOTHING RETURNING id"
    )
    .format(columns=sql.SQL(", ").join(map(sql.Identifier, IMAGE_ROW_COLUMNS)))
    .as_string()
)


def copy_images(conn: Connection, rows: Iterable[ImageRow], preprocess_version: int | None) -> list[int]:
    """Store ``rows`` by one binary COPY into a staging table and one INSERT from it; returns the new ids.

    The staging table lets rows already stored (another ingest of the same folder) be skipped rather
    than fail the COPY, and hands back the ids the new rows got. One transaction: all or nothing."""
    with transaction(conn) as cursor:
        cursor.execute(STAGE_IMAGES)
        with cursor.copy(COPY_STAGED_IMAGES) as copy:
            copy.set_types(IMAGE_ROW_TYPES)
            for row in rows:
                copy.write_row((*row, preprocess_version))
        cursor.execute(INSERT_STAGED_IMAGES)
        return [row[0] for row in cursor.fetchall()]
