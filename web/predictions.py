"""What the pages and the API share: turn a picture into a queued prediction, read results back.

A prediction is a single-image upload job: it exists the moment the upload is accepted, before
the worker has written anything. Its uploader knows it by its public token (128 random bits,
``shared.jobs.store.new_upload_token``); the job's numeric id stays internal, for operators.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests, UnprocessableEntity

from shared import jobs, models, observability, queues
from shared.config import Settings
from shared.db.connection import Connection
from shared.digits import NUM_CLASSES
from shared.images.codec import encode_image
from shared.images.preprocess import user_image_to_mnist
from shared.jobs.reports import JobReport
from web import progress_listener

MAX_FILENAME_CHARS = 200
QUEUED, DONE, FAILED = "queued", "done", "failed"
INTERNAL_FIELDS = frozenset({"id", "image_id"})
STATUS_ENDPOINT = "api.show_prediction"  # an upload's status URL, also its answer's Location
# What a refused upload is told to wait: the worker predicts hundreds of uploads in that time.
RETRY_AFTER_SECONDS = 5
# How long the queue's length seen by this process's last push stands in for a look (refuse_when_queue_full).
QUEUE_LENGTH_FRESH_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: int  # the upload job's: internal, never in the public answer
    token: str | None  # None for an upload of a release before tokens: operators only
    status: str  # queued | done | failed
    image_id: int  # internal too
    label: int | None
    confidence: float | None
    probabilities: list[float] | None
    error: str | None
    model_version: str | None  # None: an upload of an earlier release not yet predicted (production's then)
    filename: str | None

    @property
    def finished(self) -> bool:
        return self.status != QUEUED

    def answered(self, answer: jobs.progress.UploadAnswer) -> Prediction:
        """This upload, done, with the answer its micro-batch announced (the same values it stored)."""
        return dataclasses.replace(
            self,
            status=DONE,
            label=answer.label,
            confidence=answer.confidence,
            probabilities=answer.probabilities,
            error=None,
            model_version=answer.model_version,
        )

    def as_json(self) -> dict[str, Any]:
        """What the uploader may see: everything but the internal ids. Shallow (``asdict`` deep-copies
        every probability: a twentieth of an upload's CPU); the fields are not shared with anyone."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in INTERNAL_FIELDS
        }


def job_models(conn: Connection, model: str | None = None, shadow: str | None = None) -> tuple[str, str | None]:
    """The versions a new job names (``model`` default production; ``shadow`` none), resolved now from the registry.

    422 for a name the registry does not know; 503 when nothing is aliased production and none was named.
    """
    try:
        version = models.registry.resolve(conn, model or models.registry.PRODUCTION)
    except models.registry.UnknownModel as error:
        raise_unavailable(error, asked=bool(model))
    try:
        return version, models.registry.resolve_shadow(conn, version, shadow)
    except models.registry.UnknownModel as error:
        raise UnprocessableEntity(f"shadow: {error}") from None


def raise_unavailable(error: models.registry.UnknownModel, asked: bool) -> NoReturn:
    """422 for a model the client named (``asked``); 503 when production, the default, is not there."""
    if asked:
        raise UnprocessableEntity(str(error)) from None
    observability.metrics.record_refusal(ServiceUnavailable.code, "model")
    raise ServiceUnavailable(f"the model is not available: {error}") from None


def accept_upload(
    conn: Connection,
    config: Settings,
    data: bytes,
    filename: str | None,
    model: str | None = None,
    shadow: str | None = None,
) -> Prediction:
    """What the form, the canvas and the API do with a picture: refuse it when the queue is full
    (429, before decoding), check the model names, preprocess it into the stored 28x28 form, and
    hand it to ``jobs.service.submit_upload``, the one function that stores and enqueues an upload.

    ``model`` (a version or alias; default production) answers it; ``shadow`` predicts it too, and
    is never answered. Raises ValueError with a user-readable message before anything is stored,
    422 for an unknown model, 503 when none was named and nothing is aliased production.
    """
    accepted = time.time()  # the start of the upload's latency in the metrics
    refuse_when_queue_full(config)
    named, shadow_version = model or models.registry.PRODUCTION, None
    if shadow:  # a shadow must differ from the version answering: both are looked up first
        named, shadow_version = job_models(conn, model, shadow)
    decode_bytes = config.max_decode_megabytes * 2**20
    digit = encode_image(user_image_to_mnist(data, config.max_image_pixels, decode_bytes, config.concurrent_decodes))
    selection = {"upload": stored_filename(filename)}
    try:
        upload = jobs.service.submit_upload(conn, config, digit, named, selection, None, accepted, shadow_version)
    except models.registry.UnknownModel as error:
        raise_unavailable(error, asked=bool(model))
    return Prediction(
        id=upload.id,
        token=upload.public_token,
        status=QUEUED,
        image_id=upload.image_id,
        label=None,
        confidence=None,
        probabilities=None,
        error=None,
        model_version=upload.model_version,
        filename=selection["upload"],
    )


def stored_filename(filename: str | None) -> str | None:
    """The client's file name as data, shortened; NUL is dropped because PostgreSQL text cannot hold it."""
    return (filename or "").replace("\x00", "")[:MAX_FILENAME_CHARS] or None


def refuse_when_queue_full(config: Settings) -> None:
    """Bound the upload queue, so that under overload a client hears "later" at once instead of
    waiting minutes for an answer. Checked before decoding, so refusing costs almost nothing;
    concurrent requests may each pass the check, so the queue can exceed the bound by as many.

    While this process's own pushes found the queue under half the bound a moment ago
    (QUEUE_LENGTH_FRESH_SECONDS), that stands in for asking Redis: one round trip fewer per
    upload when nothing is near the bound, and a look every time when something may be."""
    if not must_look_at_queue(config):
        return
    refuse_when_waiting(config, queues.uploads.waiting(config))


def must_look_at_queue(config: Settings) -> bool:
    """False while this process's last push found the queue well under the bound a moment ago."""
    pushed = queues.uploads.pushed_length(config, QUEUE_LENGTH_FRESH_SECONDS)
    return pushed is None or pushed >= config.max_queued_uploads // 2


def refuse_when_waiting(config: Settings, waiting: int) -> None:
    """429 with Retry-After when ``waiting`` uploads (the queue's length just read) reach MAX_QUEUED_UPLOADS."""
    if waiting >= config.max_queued_uploads:
        observability.metrics.record_refusal(TooManyRequests.code, "upload_queue_full")
        raise TooManyRequests(
            f"too many uploads are waiting to be predicted ({waiting}); try again in {RETRY_AFTER_SECONDS} seconds",
            retry_after=RETRY_AFTER_SECONDS,
        )


def get_prediction(conn: Connection, prediction_id: int) -> Prediction | None:
    """By the upload job's id: for operators and for waiting."""
    return prediction_from_row(jobs.queries.upload_prediction(conn, prediction_id))


def get_prediction_by_token(conn: Connection, token: str) -> Prediction | None:
    """By the public token: what the uploader (and only whoever holds the token) may read."""
    return prediction_from_row(jobs.queries.upload_prediction_by_token(conn, token))


def prediction_from_row(row: dict[str, Any] | None) -> Prediction | None:
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
        token=row["public_token"],
        status=status,
        image_id=row["input_data_id"],
        label=row["predicted_label"],
        confidence=row["confidence"],
        probabilities=np.frombuffer(bytes(probabilities), dtype="<f4").tolist() if probabilities is not None else None,
        error=row["reason"],
        model_version=row["model_version"],
        filename=(row["selection"] or {}).get("upload"),
    )


def await_prediction(
    listener: progress_listener.Waiters,
    queued: Prediction,
    since: int | None,
    seconds: float,
    look: Callable[[], Prediction | None],
    release: Callable[[], None] | None = None,
) -> Prediction:
    """``queued`` once finished, or as it stands after ``seconds``: the one way a request waits.

    It sleeps on the process's listener, so the answer leaves within a millisecond of the prediction
    being stored: the answer the notice carried, else the stored state read back with ``look`` (a
    failure, a redelivery, a reconnect, a quiet second). ``since`` is ``listener.generation()`` read
    before the upload was enqueued or last looked at, so that no notice in between is missed.
    ``release`` gives the request's database connection back while it sleeps. When every thread that
    may wait is taken (``listener.hold``) it answers at once, as it stands."""
    deadline = time.monotonic() + seconds
    prediction = queued
    with listener.hold() as may_wait:
        if not may_wait:
            return prediction
        event = listener.register(queued.id, since)
        try:
            while not prediction.finished and (left := deadline - time.monotonic()) > 0:
                if release is not None:
                    release()
                event.wait(min(left, jobs.progress.RECHECK_SECONDS))
                event.clear()  # before the look that follows: a notice after it sets it again
                answer = listener.answer(queued.id)
                prediction = queued.answered(answer) if answer is not None else look() or prediction
        finally:
            listener.unregister(queued.id, event)
    return prediction


def prediction_body(prediction: Prediction, url: Callable[[str, str], str]) -> dict[str, Any]:
    """An upload's answer: what its uploader may see and its token's URLs,
    ``url(endpoint, token)`` (Flask's url_for)."""
    token = prediction.token or ""
    return {
        **prediction.as_json(),
        "status_url": url(STATUS_ENDPOINT, token),
        "page_url": url("views.prediction", token),
        "image_url": url("views.prediction_image", token),
    }


def answer_status(prediction: Prediction, wait: float, just_created: bool) -> int:
    """A new upload answers 202 unless the client waited and the result came; a look at one answers 200."""
    waited_for_result = wait > 0 and prediction.finished
    return 202 if just_created and not waited_for_result else 200


def job_summary(report: JobReport, attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job's progress and accuracy as plain JSON values; ``attempts``: its webhook's deliveries."""
    job = report.job
    finished = job["done_count"] + job["failed_count"]
    return {
        "id": job["id"],
        "kind": job["kind"],
        "status": job["status"],
        "model_version": job["model_version"],
        "shadow_version": job["shadow_version"],
        "selection": job["selection"],
        "total_images": job["total_images"],
        "done_count": job["done_count"],
        "failed_count": job["failed_count"],
        "progress": finished / job["total_images"] if job["total_images"] else 1.0,
        "labelled": report.labelled,
        "accuracy": report.accuracy,
        "per_class_accuracy": {
            str(k): acc for k, acc in zip(range(NUM_CLASSES), report.per_class_accuracy(), strict=True)
        },
        "low_confidence": report.low_confidence,
        "low_confidence_threshold": report.low_confidence_threshold,
        "created_at": job["created_at"].isoformat(),
        "finished_at": job["finished_at"].isoformat() if job["finished_at"] else None,
        "priority": job["priority"],
        "cancelled_at": job["cancelled_at"].isoformat() if job["cancelled_at"] else None,
        "cancelled_by": job["cancelled_by"],
        "webhook": webhook_json(job["callback_url"], attempts) if job["callback_url"] else None,
    }


def webhook_json(url: str, attempts: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"url": url, "attempts": [delivery_json(row) for row in attempts or []]}


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    """One attempt to deliver a job's webhook, as JSON (the URL is the job's, shown once)."""
    return {key: row[key] for key in ("attempt", "event", "status_code", "error", "delivered")} | {
        "attempted_at": row["attempted_at"].isoformat()
    }
