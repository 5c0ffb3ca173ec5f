"""PostgreSQL's binary COPY format as the worker reads images and writes predictions, with no database.

The payloads are built and taken apart here with ``struct``, field by field, as the format
is documented, independently of the numpy layout the module uses.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from shared.db.copy_format import (
    HEADER,
    PREDICTION_COLUMNS,
    SIGNATURE,
    TRAILER,
    parse_id_bytes_rows,
    parse_image_rows,
    prediction_rows,
)


def id_bytes_row(row_id: int, data: bytes) -> bytes:
    """One (bigint, bytea) row: field count, then each field's length and value."""
    return struct.pack("!hiqi", 2, 8, row_id, len(data)) + data


def copy_fields(payload: bytes) -> list[list[bytes]]:
    """Every row of a binary COPY payload as its list of raw field values."""
    assert payload.startswith(SIGNATURE)
    _flags, extension_length = struct.unpack_from("!ii", payload, len(SIGNATURE))
    offset = len(SIGNATURE) + 8 + extension_length
    rows = []
    while True:
        (fields,) = struct.unpack_from("!h", payload, offset)
        offset += 2
        if fields == -1:
            assert offset == len(payload), "bytes after the trailer"
            return rows
        row = []
        for _ in range(fields):
            (length,) = struct.unpack_from("!i", payload, offset)
            offset += 4
            row.append(payload[offset : offset + length])
            offset += length
        rows.append(row)


def test_header_and_trailer_are_those_of_the_format():
    assert SIGNATURE == b"PGCOPY\n\xff\r\n\x00"
    assert HEADER == SIGNATURE + b"\x00" * 8  # no flags, no header extension
    assert TRAILER == b"\xff\xff"  # a field count of -1


def test_id_bytes_rows_built_by_hand_are_parsed():
    stored = {7: b"\x93NUMPY first image", 2**40: b"", 3: bytes(range(256))}
    payload = HEADER + b"".join(id_bytes_row(row_id, data) for row_id, data in stored.items()) + TRAILER
    assert parse_id_bytes_rows(payload) == stored


def test_a_header_extension_is_skipped():
    extension = b"future header data"
    payload = SIGNATURE + struct.pack("!ii", 0, len(extension)) + extension + id_bytes_row(5, b"image") + TRAILER
    assert parse_id_bytes_rows(payload) == {5: b"image"}


def test_no_rows_is_an_empty_result():
    assert parse_id_bytes_rows(HEADER + TRAILER) == {}


@pytest.mark.parametrize("payload", [b"", b"id,image_data\n1,\\x00\n", b"PGCOPY\n" + bytes(12)])
def test_anything_else_is_refused(payload):
    with pytest.raises(ValueError, match="binary COPY"):
        parse_id_bytes_rows(payload)


def test_prediction_rows_decode_back_to_what_was_predicted():
    rng = np.random.default_rng(11)
    probabilities = rng.dirichlet(np.ones(10), size=4).astype(np.float32)
    image_ids = np.array([3, 2**33, 17, 5], dtype=np.int64)
    payload = prediction_rows(2**35 + 1, "mnist_cnn-0123456789ab", image_ids, probabilities)

    assert payload.startswith(HEADER) and payload.endswith(TRAILER)
    rows = copy_fields(payload)
    assert len(rows) == len(image_ids) and {len(row) for row in rows} == {len(PREDICTION_COLUMNS)}
    for row, image_id, vector in zip(rows, image_ids, probabilities, strict=True):
        fields = dict(zip(PREDICTION_COLUMNS, row, strict=True))
        assert struct.unpack("!q", fields["job_id"]) == (2**35 + 1,)
        assert struct.unpack("!q", fields["input_data_id"]) == (image_id,)
        assert fields["model_version"] == b"mnist_cnn-0123456789ab"
        assert struct.unpack("!h", fields["predicted_label"]) == (vector.argmax(),)
        assert struct.unpack("!f", fields["confidence"]) == (vector.max(),)
        # The vector is a BYTEA of ten little-endian float32, whatever the machine's byte order.
        assert np.array_equal(np.frombuffer(fields["prediction_probabilities"], dtype="<f4"), vector)


def test_no_predictions_is_a_payload_without_rows():
    assert prediction_rows(1, "v", np.zeros(0, dtype=np.int64), np.zeros((0, 10), dtype=np.float32)) == HEADER + TRAILER


def test_an_empty_model_version_is_refused():
    with pytest.raises(ValueError, match="model_version"):
        prediction_rows(1, "", np.array([1]), np.full((1, 10), 0.1, dtype=np.float32))


def image_row(row_id: int, data: bytes, label: int | None) -> bytes:
    """One (bigint, bytea, smallint or NULL) row."""
    head = struct.pack("!hiqi", 3, 8, row_id, len(data)) + data
    return head + (struct.pack("!ih", 2, label) if label is not None else struct.pack("!i", -1))


def test_image_rows_with_their_labels_and_without():
    payload = HEADER + image_row(7, b"\x00" * 5, 3) + image_row(8, b"", None) + image_row(2**40, b"abc", 0) + TRAILER
    images, labels = parse_image_rows(payload)
    assert images == {7: b"\x00" * 5, 8: b"", 2**40: b"abc"}
    assert labels == {7: 3, 2**40: 0}  # an unlabelled image has no entry
