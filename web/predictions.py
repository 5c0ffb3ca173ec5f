"""What the pages and the API share: turn a picture into a queued prediction, read results back.

A prediction's id is the id of its single-image upload job: it exists the moment the upload
is accepted, before the worker has written anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg2.extensions
import redis.exceptions
from celery import Celery
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from shared import db, upload_queue
from shared.config import Settings
from shared.images import IMAGE_SHAPE, encode_image, user_image_to_mnist
from shared.model_info import model_version
from shared.reports import NUM_CLASSES, JobReport
from shared.tasks import bulk_queue, enqueue_batches

# Look again at least this often, even without a notice (a worker of an older version sends none).
RECHECK_SECONDS = 1.0
MAX_FILENAME_CHARS = 200
QUEUED, DONE, FAILED = "queued", "done", "failed"
# What a refused upload is told to wait: the worker predicts hundreds of uploads in that time.
RETRY_AFTER_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: int
    status: str  # queued | done | failed
    image_id: int
    label: int | None
    confidence: float | None
    probabilities: list[float] | None
    error: str | None
    model_version: str
    filename: str | None

    @property
    def finished(self) -> bool:
        return self.status != QUEUED

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def current_model_version(config: Settings) -> str:
    """The version new jobs are recorded with; 503 when the model file is missing."""
    try:
        return model_version(config.model_path)
    except ValueError as error:
        raise ServiceUnavailable(f"the model is not available: {error}") from None


def submit_upload(conn: psycopg2.extensions.connection, config: Settings, data: bytes, filename: str | None) -> int:
    """Preprocess, store and enqueue one picture on the upload queue; return the prediction id.

    Raises ValueError with a user-readable message before anything is stored, and
    TooManyRequests (429) when the upload queue is full.
    """
    refuse_when_queue_full(config)
    digit = user_image_to_mnist(data, config.max_image_pixels)
    version = current_model_version(config)
    selection = {"upload": stored_filename(filename)}
    job_id, image_id = db.create_upload_job(conn, encode_image(digit), list(IMAGE_SHAPE), version, selection)
    try:
        upload_queue.enqueue(config, job_id, [image_id])
    except redis.exceptions.RedisError:
        db.delete_upload_job(conn, job_id, image_id)
        raise
    return job_id


def stored_filename(filename: str | None) -> str | None:
    """The client's file name as data, shortened; NUL is dropped because PostgreSQL text cannot hold it."""
    return (filename or "").replace("\x00", "")[:MAX_FILENAME_CHARS] or None


def refuse_when_queue_full(config: Settings) -> None:
    """Bound the upload queue, so that under overload a client hears "later" at once instead of
    waiting minutes for an answer. Checked before decoding, so refusing costs almost nothing;
    concurrent requests may each pass the check, so the queue can exceed the bound by as many."""
    waiting = upload_queue.waiting(config)
    if waiting >= config.max_queued_uploads:
        raise TooManyRequests(
            f"too many uploads are waiting to be predicted ({waiting}); try again in {RETRY_AFTER_SECONDS} seconds",
            retry_after=RETRY_AFTER_SECONDS,
        )


def get_prediction(conn: psycopg2.extensions.connection, prediction_id: int) -> Prediction | None:
    row = db.upload_prediction(conn, prediction_id)
    if row is None:
        return None
    probabilities = row["prediction_probabilities"]
    if row["predicted_label"] is not None:
        status = DONE
    elif row["reason"] is not None:
        status = FAILED
    else:
        status = QUEUED
    return Prediction(
        id=row["id"],
        status=status,
        image_id=row["input_data_id"],
        label=row["predicted_label"],
        confidence=row["confidence"],
        probabilities=np.frombuffer(bytes(probabilities), dtype="<f4").tolist() if probabilities is not None else None,
        error=row["reason"],
        model_version=row["model_version"],
        filename=(row["selection"] or {}).get("upload"),
    )


def wait_for_prediction(conn: psycopg2.extensions.connection, prediction_id: int, seconds: float) -> Prediction | None:
    """The prediction once finished, or its state after ``seconds``."""
    prediction = get_prediction(conn, prediction_id)
    if prediction is None or prediction.finished or seconds <= 0:
        return prediction
    with progress_notices(conn):
        return await_prediction(conn, prediction_id, seconds)


@contextlib.contextmanager
def progress_notices(conn: psycopg2.extensions.connection) -> Iterator[None]:
    """Hear the worker's NOTIFY for every stored batch while the block runs."""
    db.listen_for_progress(conn)
    try:
        yield
    finally:
        db.stop_listening(conn)


def await_prediction(conn: psycopg2.extensions.connection, prediction_id: int, seconds: float, look_first: bool = True) -> Prediction:
    """Inside ``progress_notices``: sleep on the worker's NOTIFY instead of polling, so the
    answer leaves within a millisecond of the prediction being stored. ``look_first`` is
    False for an upload just enqueued, which cannot be finished yet."""
    deadline = time.monotonic() + seconds
    prediction = get_prediction(conn, prediction_id) if look_first else None
    while (prediction is None or not prediction.finished) and time.monotonic() < deadline:
        heard = db.wait_for_progress(conn, min(deadline - time.monotonic(), RECHECK_SECONDS))
        if prediction_id in heard or not heard:  # ours moved, or a quiet interval passed: look again
            prediction = get_prediction(conn, prediction_id)
    return prediction if prediction is not None else get_prediction(conn, prediction_id)


def submit_selection(
    conn: psycopg2.extensions.connection, celery: Celery, config: Settings, split: str | None, label: int | None, limit: int | None
) -> tuple[int, int]:
    """Create a bulk job from stored images and enqueue it; return (job id, images). ValueError if none match."""
    version = current_model_version(config)
    image_ids = db.select_image_ids(conn, split, label, limit)
    if not image_ids:
        raise ValueError("no stored images match that selection")
    selection = {"split": split, "label": label, "limit": limit, "unpredicted": False}
    job_id = db.create_job(conn, image_ids, version, selection)
    enqueue_batches(celery, job_id, image_ids, config.batch_size, bulk_queue(config))
    return job_id, len(image_ids)


def job_summary(report: JobReport) -> dict[str, Any]:
    """A job's progress and accuracy as plain JSON values."""
    job = report.job
    finished = job["done_count"] + job["failed_count"]
    return {
        "id": job["id"],
        "kind": job["kind"],
        "status": job["status"],
        "model_version": job["model_version"],
        "selection": job["selection"],
        "total_images": job["total_images"],
        "done_count": job["done_count"],
        "failed_count": job["failed_count"],
        "progress": finished / job["total_images"] if job["total_images"] else 1.0,
        "labelled": report.labelled,
        "accuracy": report.accuracy,
        "per_class_accuracy": {str(k): acc for k, acc in zip(range(NUM_CLASSES), report.per_class_accuracy(), strict=True)},
        "low_confidence": report.low_confidence,
        "created_at": job["created_at"].isoformat(),
        "finished_at": job["finished_at"].isoformat() if job["finished_at"] else None,
    }
