"""A job's results out, streamed in constant memory: CSV, JSON Lines or Parquet, for the producer and the web.

Rows come from a server-side cursor in image id order (``export_store.result_rows``) and leave as
they come, a chunk at a time: an export of a million predictions holds what one of ten thousand
does. A job still running exports what is stored so far; ``ExportInfo.partial`` says so, and the
callers say it to the user (a line on stderr, an HTTP header).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import IO, Any

import numpy as np

from shared.db.connection import Connection
from shared.digits import NUM_CLASSES
from shared.jobs import export_store, store

FORMATS = ("csv", "jsonl", "parquet")
TEXT_FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/jsonl"}
COLUMNS = ("image_id", "source", "true_label", "predicted_label", "confidence", "model_version", "predicted_at")
PROBABILITY_COLUMNS = tuple(f"p{digit}" for digit in range(NUM_CLASSES))
# Rows per piece of text handed on (a write, an HTTP chunk) and per Parquet row group.
PIECE_ROWS = 1000
PARQUET_ROWS = 50_000


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What the export covers: the jobs, whether any is unfinished, and how many results they have so far."""

    job_ids: tuple[int, ...]
    partial: bool
    stored: int
    total: int

    def note(self) -> str:
        """The one line that tells a partial export from a complete one."""
        jobs = ", ".join(map(str, self.job_ids))
        state = "still running: these are the results stored so far" if self.partial else "done"
        return f"job {jobs}: {state} ({self.stored} of {self.total} images predicted or failed)"


def describe(conn: Connection, job_ids: Sequence[int]) -> ExportInfo | None:
    """The export of ``job_ids``; None when one of them does not exist."""
    found = [store.get_job(conn, job_id) for job_id in job_ids]
    if not found or any(job is None for job in found):
        return None
    return ExportInfo(
        tuple(job_ids),
        any(job["status"] != "done" for job in found if job is not None),
        sum(job["done_count"] + job["failed_count"] for job in found if job is not None),
        sum(job["total_images"] for job in found if job is not None),
    )


def records(
    conn: Connection, job_ids: Sequence[int], after: int = 0, limit: int | None = None, probabilities: bool = False
) -> Iterator[dict[str, Any]]:
    """Each result as a dict of ``COLUMNS`` (and ``PROBABILITY_COLUMNS`` with ``probabilities``)."""
    for row in export_store.result_rows(conn, job_ids, after, limit, probabilities):
        image_id, source, split, index, true_label, predicted, confidence, version, created, vector = row
        record: dict[str, Any] = {
            "image_id": image_id,
            "source": source if source is not None else (f"{split}:{index}" if split is not None else None),
            "true_label": true_label,
            "predicted_label": predicted,
            "confidence": round(float(confidence), 6),
            "model_version": version,
            "predicted_at": created,
        }
        if probabilities:
            values = np.frombuffer(vector, dtype="<f4").tolist() if vector is not None else [None] * NUM_CLASSES
            record |= {
                name: None if value is None else round(value, 6)
                for name, value in zip(PROBABILITY_COLUMNS, values, strict=True)
            }
        yield record


def columns(probabilities: bool) -> tuple[str, ...]:
    return COLUMNS + PROBABILITY_COLUMNS if probabilities else COLUMNS


def text_pieces(items: Iterable[dict[str, Any]], form: str, probabilities: bool) -> Iterator[str]:
    """CSV (with its header) or JSON Lines, ``PIECE_ROWS`` rows per piece of text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns(probabilities), lineterminator="\n") if form == "csv" else None
    if writer is not None:
        writer.writeheader()
    count = 0
    for record in items:
        if writer is not None:
            writer.writerow({**record, "predicted_at": _iso(record["predicted_at"])})
        else:
            buffer.write(json.dumps({**record, "predicted_at": _iso(record["predicted_at"])}) + "\n")
        count += 1
        if count % PIECE_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def write(conn: Connection, job_ids: Sequence[int], form: str, output: IO[bytes], probabilities: bool) -> int:
    """The results of ``job_ids`` into ``output`` in ``form``; returns how many rows."""
    counted = _Counted(records(conn, job_ids, probabilities=probabilities))
    if form == "parquet":
        _write_parquet(counted, output, probabilities)
    else:
        for piece in text_pieces(counted, form, probabilities):
            output.write(piece.encode())
    return counted.count


class _Counted:
    """An iterator of records that counts them as they pass."""

    def __init__(self, items: Iterator[dict[str, Any]]) -> None:
        self.items, self.count = items, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.items:
            self.count += 1
            yield item


def _write_parquet(items: Iterable[dict[str, Any]], output: IO[bytes], probabilities: bool) -> None:
    """Row groups of ``PARQUET_ROWS``; pyarrow is imported here, so only the producer needs it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [
        pa.field("image_id", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("true_label", pa.int16()),
        pa.field("predicted_label", pa.int16()),
        pa.field("confidence", pa.float32()),
        pa.field("model_version", pa.string()),
        pa.field("predicted_at", pa.timestamp("us", tz="UTC")),
    ] + ([pa.field(name, pa.float32()) for name in PROBABILITY_COLUMNS] if probabilities else [])
    schema = pa.schema(fields)
    with pq.ParquetWriter(output, schema) as writer:
        group: list[dict[str, Any]] = []
        for record in items:
            group.append(record)
            if len(group) == PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(group, schema))
                group = []
        if group:
            writer.write_table(pa.Table.from_pylist(group, schema))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
