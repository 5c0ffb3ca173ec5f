"""The job service: select stored images, create a job, enqueue it; and the failure policy of both lanes.

Every way work enters the system goes through here: the producer's ``submit``, the web's
``POST /api/jobs`` and uploads, ``resume`` and the sweeper, the benchmarks and the tests.
The job is recorded in PostgreSQL before anything is enqueued, so whatever Redis loses can
be found again (``resume_job``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Sequence
from typing import Any

import redis.exceptions
from celery import Celery

from shared import images, models, queues
from shared.config import Settings
from shared.db.connection import Connection
from shared.digits import IMAGE_SHAPE
from shared.jobs import fair_share, lifecycle_store, store, webhooks

# Work delivered this often without finishing (its worker died each time) is given up on.
MAX_DELIVERIES = 3


class NoImagesSelected(ValueError):
    """The selection matches no stored image: there is nothing to submit."""


class TooManyImages(ValueError):
    """The selection matches more than MAX_JOB_IMAGES images: refused before anything is recorded."""


class UnknownImages(ValueError):
    """Some of the image IDs given are not stored: refused whole, before anything is recorded."""

    SHOWN = 5  # IDs named in the message; the rest are counted

    def __init__(self, missing: Sequence[int], given: int) -> None:
        self.image_ids = list(missing)
        shown = ", ".join(str(image_id) for image_id in self.image_ids[: self.SHOWN])
        more = f" and {len(self.image_ids) - self.SHOWN} more" if len(self.image_ids) > self.SHOWN else ""
        super().__init__(
            f"{len(self.image_ids)} of the {given} image IDs are not stored: {shown}{more}; no job created"
        )


class UnknownJob(ValueError):
    """There is no job of that id."""


class JobEnded(ValueError):
    """The job has ended (or is an upload, which cannot be cancelled): nothing was changed."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which stored images a job covers: exact ``image_ids``, or every image matching the filters."""

    split: str | None = None
    label: int | None = None
    limit: int | None = None
    unpredicted: bool = False  # only images the job's model has not predicted yet
    image_ids: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What the jobs table records of the selection (a list of IDs is recorded as its length)."""
        if self.image_ids:
            return {"ids": len(self.image_ids)}
        return {"split": self.split, "label": self.label, "limit": self.limit, "unpredicted": self.unpredicted}


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    id: int
    images: int
    batches: int
    model_version: str
    shadow_version: str | None = None


def submit_job(
    conn: Connection,
    app: Celery,
    settings: Settings,
    selection: Selection,
    model_version: str,
    batch_size: int | None = None,
    shadow_version: str | None = None,
    priority: str = "normal",
    callback_url: str | None = None,
) -> SubmittedJob:
    """Select the images, record the job, enqueue its first batches (the rest follow: ``fair_share``).

    ``model_version`` serves the job and ``shadow_version`` (if any) shadows it: registered
    versions, resolved by the caller (``shared.models.registry.resolve_job_models``).

    NoImagesSelected when none match, TooManyImages when more than MAX_JOB_IMAGES do, UnknownImages
    when an ID of ``selection.image_ids`` is not a stored image (the job is refused whole), ValueError
    for an unknown ``priority``, WebhookRefused for a ``callback_url`` that may not be called (nothing
    is recorded then). A selection by filters never brings its IDs into Python: the job's array and its
    batches are built in PostgreSQL, and only the first FAIR_SHARE_BATCHES batches are read, to be sent.
    """
    size = batch_size or settings.batch_size
    fair_share.check_priority(priority)
    if callback_url is not None:
        webhooks.check_url(callback_url, settings)
    options: dict[str, Any] = {
        "shadow_version": shadow_version,
        "batch_size": size,
        "priority": priority,
        "callback_url": callback_url,
    }
    if selection.image_ids:
        unique_ids = list(dict.fromkeys(selection.image_ids))
        refuse_too_many(len(unique_ids), settings.max_job_images)
        missing = images.store.missing_image_ids(conn, unique_ids)
        if missing:
            raise UnknownImages(missing, len(unique_ids))
        job_id = store.create_job(conn, unique_ids, model_version, selection.describe(), **options)
        image_count = len(unique_ids)
    else:
        filters = {
            "split": selection.split,
            "label": selection.label,
            "model": model_version if selection.unpredicted else None,
        }
        created, matched = store.create_job_from_selection(
            conn, filters, selection.limit, model_version, selection.describe(), settings.max_job_images, **options
        )
        refuse_too_many(matched, settings.max_job_images)
        if created is None:
            raise NoImagesSelected("no stored images match that selection")
        job_id, image_count = created, matched
    fair_share.send_next(conn, app, settings, job_id, settings.fair_share_batches)
    return SubmittedJob(job_id, image_count, -(-image_count // size), model_version, shadow_version)


def refuse_too_many(images: int, max_images: int) -> None:
    if images > max_images:
        raise TooManyImages(
            f"the selection matches more than MAX_JOB_IMAGES={max_images:,} images;"
            " narrow it (--split, --label, --limit) or raise MAX_JOB_IMAGES"
        )


def enqueue_bulk(
    app: Celery, settings: Settings, job_id: int, image_ids: Sequence[int], batch_size: int | None = None
) -> int:
    """Send a job's images as batches of ``batch_size`` (default BATCH_SIZE) IDs; returns how many batches."""
    size = batch_size or settings.batch_size
    batches = (list(image_ids[start : start + size]) for start in range(0, len(image_ids), size))
    return queues.broker.send_batches(app, queues.broker.bulk_queue(settings), job_id, batches)


@dataclasses.dataclass(frozen=True)
class SubmittedUpload:
    id: int
    image_id: int
    model_version: str
    public_token: str


def submit_upload(
    conn: Connection,
    settings: Settings,
    image_data: bytes,
    model: str,
    selection: dict[str, Any],
    public_token: str | None = None,
    accepted: float | None = None,
    shadow_version: str | None = None,
) -> SubmittedUpload:
    """Store one stored-form image as a single-image job and put it on the upload queue: every upload
    (the web's form, canvas and API, the benchmarks, the tests) enters here.

    ``model`` is a version or an alias, resolved by the statement that stores the upload (one round
    trip: image and job in one transaction); a name that stands for no version raises
    ``UnknownModel`` with nothing stored. The job records ``public_token`` (default: a new one), the
    uploader's only way back to the result. If Redis refuses the entry the job is removed again, so
    no job waits for ever. ``accepted`` (``time.time()`` when the request began; default: now) stamps
    the queue entry, for the upload's latency and the queue's age in the metrics. A ``shadow_version``
    predicts it too, never answered.
    """
    models.registry.check_name(model)
    token = public_token or store.new_upload_token()
    created = store.create_named_upload_job(
        conn, image_data, list(IMAGE_SHAPE), model, selection, token, shadow_version
    )
    if created is None:
        raise models.registry.unknown(model)
    job_id, image_id, version = created
    try:
        queues.uploads.enqueue(settings, job_id, [image_id], accepted)
    except redis.exceptions.RedisError:
        store.delete_upload_job(conn, job_id, image_id)
        raise
    return SubmittedUpload(job_id, image_id, version, token)


def resume_job(conn: Connection, app: Celery, settings: Settings, job_id: int) -> int:
    """Enqueue a job's unfinished images again, on its own lane; returns how many. Always safe.

    Images that already have a prediction or a recorded failure are not sent. Of a job fed in slices
    (``fair_share``), the batches already taken are sent again where they lack results, and the job is
    topped up to FAIR_SHARE_BATCHES batches in play. UnknownJob for a job that does not exist, JobEnded
    for a cancelled one: a cancel is final (submit the images again for a new job).
    """
    job = store.get_job(conn, job_id)
    if job is None:
        raise UnknownJob(f"there is no job {job_id}")
    if job["status"] == "cancelled":
        when = f"{job['cancelled_at']:%Y-%m-%d %H:%M:%S %Z}".strip()
        raise JobEnded(f"job {job_id} was cancelled by {job['cancelled_by']} at {when}: not resumed")
    sent: list[int] = []  # a job of 1M images is read and sent a batch at a time
    batches = _counted(store.unfinished_image_id_batches(conn, job_id, settings.batch_size, enqueued_only=True), sent)
    if job["kind"] == "upload":
        for batch in batches:
            queues.uploads.enqueue(settings, job_id, batch)
    else:
        priority = fair_share.broker_priority(job["priority"])
        queues.broker.send_batches(app, queues.broker.bulk_queue(settings), job_id, batches, priority=priority)
        if len(sent) < settings.fair_share_batches:
            sent.append(fair_share.send_next(conn, app, settings, job_id, settings.fair_share_batches - len(sent))[1])
    if sum(sent):
        store.mark_resumed(conn, job_id)
    return sum(sent)


def cancel_job(conn: Connection, app: Celery, settings: Settings, job_id: int, by: str) -> tuple[bool, dict[str, Any]]:
    """Cancel a queued or running bulk job: its status is ``cancelled`` at once, with ``by`` and the time.

    Returns (whether this call cancelled it, the job); cancelling a cancelled job again changes nothing.
    UnknownJob, or JobEnded for a job done or failed (or an upload), with nothing changed. Workers skip its
    batches still queued, and what was stored stays. The workers are told at once, so that they announce the
    end (metrics, webhook); the sweeper would find it too.
    """
    changed, job = lifecycle_store.cancel_job(conn, job_id, by)
    if job is None:
        raise UnknownJob(f"there is no job {job_id}")
    if job["kind"] != "bulk":
        raise JobEnded(f"job {job_id} is an upload: only bulk jobs can be cancelled")
    if job["status"] != "cancelled":
        raise JobEnded(f"job {job_id} has already ended ({job['status']}): nothing to cancel")
    if changed:
        app.send_task(queues.broker.JOB_ENDED_TASK, args=[job_id], queue=queues.broker.bulk_queue(settings), priority=0)
    return changed, job


def _counted(batches: Iterator[list[int]], sizes: list[int]) -> Iterator[list[int]]:
    """``batches`` as they are, each one's size appended to ``sizes`` as it passes."""
    for batch in batches:
        sizes.append(len(batch))
        yield batch


# --- the failure policy, the same for bulk batches and uploads --------------------------


class NextStep(enum.Enum):
    RUN = "run"
    SPLIT = "split"  # a batch that did not finish before: halve it to isolate what kills workers
    GIVE_UP = "give up"  # a single image that killed its worker MAX_DELIVERIES times


def next_step(delivery_count: int, images: int) -> NextStep:
    """What a lane does with work delivered for the ``delivery_count``-th time (1: the first)."""
    if delivery_count > 1 and images > 1:
        return NextStep.SPLIT
    if delivery_count > MAX_DELIVERIES:
        return NextStep.GIVE_UP
    return NextStep.RUN


def gave_up_reason() -> str:
    return f"gave up after {MAX_DELIVERIES} attempts: the worker died on this image"


def prediction_failed_reason(error: BaseException) -> str:
    return f"prediction failed: {error}"
