"""Stored images (``input_data``): insert, fetch by id, select by filters."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from shared.db import copy_format
from shared.db.connection import Connection, query, query_one, single_statement, transaction


class ImageRow(NamedTuple):
    image_data: bytes
    true_label: int | None
    image_shape: list[int]
    dataset_split: str
    image_index: int | None
    source: str | None


def insert_images(conn: Connection, rows: Sequence[ImageRow]) -> list[int]:
    """Insert images; rows already stored (same split and index, or same source) are skipped."""
    with transaction(conn) as cursor:
        inserted = psycopg2.extras.execute_values(
            cursor,
            "INSERT INTO input_data (image_data, true_label, image_shape, dataset_split, image_index, source)"
            " VALUES %s ON CONFLICT DO NOTHING RETURNING id",
            [(psycopg2.Binary(r.image_data), r.true_label, r.image_shape, r.dataset_split, r.image_index, r.source) for r in rows],
            page_size=1000,
            fetch=True,
        )
    return [row[0] for row in inserted]


def fetch_images(conn: Connection, image_ids: Sequence[int]) -> dict[int, bytes]:
    """Image bytes by ID in one query; missing IDs are simply absent from the result.

    Read with COPY in binary format: half the time of a SELECT, whose bytea arrives as hex
    text that both PostgreSQL and psycopg2 must convert.
    """
    ids = sql.Literal([int(image_id) for image_id in image_ids])  # COPY takes no parameters: quoted by psycopg2
    payload = io.BytesIO()
    with single_statement(conn) as cursor:
        cursor.copy_expert(
            sql.SQL("COPY (SELECT id, image_data FROM input_data WHERE id = ANY({ids})) TO STDOUT WITH (FORMAT binary)").format(ids=ids),
            payload,
        )
    return copy_format.parse_id_bytes_rows(payload.getvalue())


def fetch_images_and_labels(conn: Connection, image_ids: Sequence[int]) -> tuple[dict[int, bytes], dict[int, int]]:
    """``fetch_images`` with the true labels of the labelled ones, in the same COPY: the worker
    counts a chunk's statistics itself, so storing them costs PostgreSQL a handful of rows."""
    ids = sql.Literal([int(image_id) for image_id in image_ids])
    payload = io.BytesIO()
    select = "COPY (SELECT id, image_data, true_label FROM input_data WHERE id = ANY({ids})) TO STDOUT WITH (FORMAT binary)"
    with single_statement(conn) as cursor:
        cursor.copy_expert(sql.SQL(select).format(ids=ids), payload)
    return copy_format.parse_image_rows(payload.getvalue())


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
        sql.SQL("SELECT d.id FROM input_data d WHERE {filter} ORDER BY d.id LIMIT %(limit)s").format(filter=SELECTION_FILTER),
        {"split": split, "label": label, "model": unpredicted_by, "limit": limit},
    )
    return [row[0] for row in rows]
