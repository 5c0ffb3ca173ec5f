"""PostgreSQL's binary COPY format, read and written as pure functions (no connection needed).

The worker reads images and writes predictions with binary COPY: half the time of a SELECT
whose bytea arrives as hex, and a fifth of the per-row INSERT cost. The format is a header,
then per row a field count and each field as a big-endian length and value, then -1.
"""

from __future__ import annotations

import struct

import numpy as np

from shared.digits import NUM_CLASSES

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + struct.pack("!ii", 0, 0)  # no flags, no header extension
TRAILER = struct.pack("!h", -1)
# The columns of a prediction row in ``prediction_rows``, in its order.
PREDICTION_COLUMNS = ("job_id", "input_data_id", "model_version", "predicted_label", "confidence", "prediction_probabilities")


def parse_id_bytes_rows(payload: bytes) -> dict[int, bytes]:
    """Rows of (bigint id, bytea) -> {id: bytes}; ValueError for anything that is not binary COPY."""
    if not payload.startswith(SIGNATURE):
        raise ValueError("not PostgreSQL binary COPY data")
    (extension_length,) = struct.unpack_from("!i", payload, len(SIGNATURE) + 4)
    offset = len(SIGNATURE) + 8 + extension_length
    rows = {}
    while True:
        (fields,) = struct.unpack_from("!h", payload, offset)
        if fields == -1:
            return rows
        _, row_id, length = struct.unpack_from("!iqi", payload, offset + 2)
        offset += 18
        rows[row_id] = payload[offset : offset + length]
        offset += length


def parse_image_rows(payload: bytes) -> tuple[dict[int, bytes], dict[int, int]]:
    """Rows of (bigint id, bytea, smallint or NULL) -> ({id: bytes}, {id: label} of the labelled ones)."""
    if not payload.startswith(SIGNATURE):
        raise ValueError("not PostgreSQL binary COPY data")
    (extension_length,) = struct.unpack_from("!i", payload, len(SIGNATURE) + 4)
    offset = len(SIGNATURE) + 8 + extension_length
    images, labels = {}, {}
    while True:
        (fields,) = struct.unpack_from("!h", payload, offset)
        if fields == -1:
            return images, labels
        _, row_id, length = struct.unpack_from("!iqi", payload, offset + 2)
        offset += 18
        images[row_id] = payload[offset : offset + length]
        offset += length
        (label_length,) = struct.unpack_from("!i", payload, offset)
        if label_length == 2:
            (labels[row_id],) = struct.unpack_from("!h", payload, offset + 4)
        offset += 4 + max(0, label_length)


def prediction_rows(job_id: int | np.ndarray, model_version: str, image_ids: np.ndarray, probabilities: np.ndarray) -> bytes:
    """Prediction rows (``PREDICTION_COLUMNS``) in binary COPY format, built by numpy with no loop per row.

    ``job_id`` is one job for every row, or one per row. Every row has the same layout, so the
    rows are one structured array; the label and the
    confidence are the argmax and max of each probability vector.
    """
    version = model_version.encode()
    if not version:
        raise ValueError("model_version must not be empty")
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("job_id_length", ">i4"), ("job_id", ">i8"),
            ("image_id_length", ">i4"), ("image_id", ">i8"),
            ("version_length", ">i4"), ("version", f"S{len(version)}"),
            ("label_length", ">i4"), ("label", ">i2"),
            ("confidence_length", ">i4"), ("confidence", ">f4"),
            ("vector_length", ">i4"), ("vector", "<f4", (NUM_CLASSES,)),
        ]
    )  # fmt: skip
    rows = np.empty(len(image_ids), dtype=layout)
    rows["fields"] = len(PREDICTION_COLUMNS)
    rows["job_id_length"], rows["job_id"] = 8, job_id
    rows["image_id_length"], rows["image_id"] = 8, image_ids
    rows["version_length"], rows["version"] = len(version), version
    rows["label_length"], rows["label"] = 2, probabilities.argmax(axis=1)
    rows["confidence_length"], rows["confidence"] = 4, probabilities.max(axis=1)
    rows["vector_length"], rows["vector"] = NUM_CLASSES * 4, probabilities
    return HEADER + rows.tobytes() + TRAILER
