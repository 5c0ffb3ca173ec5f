"""One task's batch of stored images through the model and back into the database.

Kept apart from Celery so it reads (and tests) as plain code. A batch is cut into chunks
that flow through a pipeline: while the model predicts a chunk in this thread, the database
lane reads ahead and stores what is predicted, so the CPU does not wait on I/O. Inference
releases the GIL, so the two really overlap. Each batch's size, results and seconds per stage
go to the metrics once it is stored (``shared.observability.metrics.record_batch``).

Round trips are what a database host a network away costs, so a batch makes few of them:
the first chunk is read alone (the model starts on it at once) and the rest in one read, and
each store takes every chunk predicted since the last one (``PendingStores``). On a near
database each chunk is stored as soon as it is predicted; on a far one, stores merge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import psycopg

from shared import images, jobs, observability
from shared.db import connection
from shared.digits import IMAGE_SHAPE, NUM_CLASSES
from shared.images.codec import decode_image, decode_images
from shared.jobs.results import FailureRow, PredictionBatch
from shared.jobs.statistics import UNLABELLED
from shared.models.store import UploadRow

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
UNKNOWN_ID_REASON = "unknown image id"
# LiteRT reaches full speed by 256 images; smaller chunks would only add per-call overhead.
CHUNK_SIZE = 256
Result = TypeVar("Result")


class DatabaseLane:
    """A single thread that owns this process's database connection; work runs in submit order.

    ``threaded=False`` runs the work in the caller's thread instead, for a caller that has nothing
    to overlap a database call with (the upload consumer): a hand-over to another thread costs two
    thread wake-ups per call, which on a small virtual machine is a good part of an upload's latency.
    """

    def __init__(self, database_url: str, threaded: bool = True) -> None:
        self._database_url = database_url
        self._connection: connection.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="database") if threaded else None

    def submit(self, function: Callable[..., Result], *args: Any) -> Future[Result]:
        if self._executor is not None:
            return self._executor.submit(self._call, function, *args)
        done: Future[Result] = Future()
        try:
            done.set_result(self._call(function, *args))
        except Exception as error:  # the caller's result() raises it, as from the thread
            done.set_exception(error)
        return done

    def _call(self, function: Callable[..., Result], *args: Any) -> Result:
        if self._connection is None or self._connection.closed:
            fresh = connection.connect(self._database_url)
            fresh.autocommit = True  # single statements in one round trip
            connection.plan_once(fresh)  # every statement of a lane is keyed by ids or a version
            self._connection = fresh
        try:
            return function(self._connection, *args)
        except connection.TRANSIENT_ERRORS:
            self._drop_connection()  # it may be dead; the retry of the task connects again
            raise

    def _drop_connection(self) -> None:
        try:
            if self._connection is not None:
                self._connection.close()
        except psycopg.Error:
            pass
        self._connection = None


class StageClock:
    """Seconds one batch spent in each stage, summed over its chunks: fetch and store run on the
    database lane, inference (decoding and the model call) in the task's thread, overlapping."""

    def __init__(self) -> None:
        self.seconds = {"fetch": 0.0, "inference": 0.0, "store": 0.0}

    def timed(self, stage: str, function: Callable[..., Result]) -> Callable[..., Result]:
        def run(*args: Any) -> Result:
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return run


def decode_batch(image_ids: Sequence[int], stored: dict[int, bytes]) -> tuple[list[int], np.ndarray, list[FailureRow]]:
    """Split a batch into decodable images and failures; one bad image never fails the rest."""
    wanted = list(dict.fromkeys(image_ids))
    found = [image_id for image_id in wanted if image_id in stored]
    failures = [FailureRow(image_id, UNKNOWN_ID_REASON) for image_id in wanted if image_id not in stored]
    try:
        return found, decode_images([stored[image_id] for image_id in found]), failures
    except ValueError:  # at least one is corrupt: find which, image by image
        pass
    good_ids: list[int] = []
    images: list[np.ndarray] = []
    for image_id in found:
        try:
            images.append(decode_image(stored[image_id]))
        except ValueError as error:
            failures.append(FailureRow(image_id, f"corrupt image: {error}"))
            continue
        good_ids.append(image_id)
    return good_ids, np.stack(images) if images else np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8), failures


def predict_chunk(
    predict: PredictFn,
    job_id: int,
    chunk: Sequence[int],
    stored: dict[int, bytes],
    labels: dict[int, int] | None = None,
) -> tuple[PredictionBatch, list]:
    good_ids, images, failures = decode_batch(chunk, stored)
    for failure in failures:
        log.warning("job %s: image %s failed: %s", job_id, failure.input_data_id, failure.reason)
    probabilities = predict(images) if good_ids else np.zeros((0, NUM_CLASSES), dtype=np.float32)
    return PredictionBatch.of(good_ids, probabilities, true_labels_of(good_ids, labels)), failures


def true_labels_of(image_ids: Sequence[int], labels: dict[int, int] | None) -> list[int] | None:
    """The images' true labels, -1 for none, so the store counts the statistics in numpy; None when not read."""
    return None if labels is None else [labels.get(image_id, UNLABELLED) for image_id in image_ids]


class PendingStores:
    """Predicted chunks waiting for the database lane: each ``store`` call there takes all that are waiting.

    One call is submitted per chunk, so nothing waits longer than the lane's queue; a call that finds
    the chunks already taken by an earlier one costs no round trip."""

    def __init__(self, store: Callable[..., tuple[int, int]], job_id: int, model_version: str) -> None:
        self._store, self._job_id, self._model_version = store, job_id, model_version
        self._lock = threading.Lock()
        self._waiting: list[tuple[PredictionBatch, list[FailureRow]]] = []

    def add(self, predictions: PredictionBatch, failures: list[FailureRow]) -> None:
        with self._lock:
            self._waiting.append((predictions, failures))

    def store(self, conn: connection.Connection) -> tuple[int, int]:
        with self._lock:
            taken, self._waiting = self._waiting, []
        if not taken:
            return 0, 0
        predictions = PredictionBatch.concatenate([chunk for chunk, _ in taken])
        failures = [failure for _, chunk_failures in taken for failure in chunk_failures]
        return self._store(conn, self._job_id, self._model_version, predictions, failures)


def process_batch(
    lane: DatabaseLane, predict: PredictFn, model_version: str, job_id: int, image_ids: Sequence[int]
) -> tuple[int, int]:
    """Predict and store one batch; return (new predictions, new failures).

    Returns only when every chunk is stored, so the task's late acknowledgement still
    means "in PostgreSQL".
    """
    chunks = [list(image_ids[start : start + CHUNK_SIZE]) for start in range(0, len(image_ids), CHUNK_SIZE)]
    if not chunks:
        return 0, 0
    clock = StageClock()
    fetch = clock.timed("fetch", images.store.fetch_images_and_labels)
    infer = clock.timed("inference", predict_chunk)
    pending = PendingStores(clock.timed("store", jobs.results.store_results), job_id, model_version)
    reads = [lane.submit(fetch, chunks[0])]
    if len(chunks) > 1:
        reads.append(lane.submit(fetch, [image_id for chunk in chunks[1:] for image_id in chunk]))
    stores: list[Future[tuple[int, int]]] = []
    try:
        for index, chunk in enumerate(chunks):
            stored, labels = reads[min(index, 1)].result()
            predictions, failures = infer(predict, job_id, chunk, stored, labels)
            pending.add(predictions, failures)
            stores.append(lane.submit(pending.store))
    finally:
        outcomes = [store.result() for store in stores]  # wait for all; re-raises the first error
    done, failed = sum(done for done, _ in outcomes), sum(failed for _, failed in outcomes)
    observability.metrics.record_batch(
        observability.metrics.BULK, model_version, len(image_ids), done, failed, clock.seconds
    )
    return done, failed


def process_uploads(
    lane: DatabaseLane, predict: PredictFn, model_version: str, uploads: Sequence[UploadRow], fetch_seconds: float = 0.0
) -> tuple[int, int]:
    """Predict a micro-batch of uploads, read with their images (``upload_batch``, which took
    ``fetch_seconds``), in one model call; store them in one transaction.

    Returns (new predictions, new failures). An image that cannot be read is failed alone, as
    in a bulk batch; an error of the model or of the store fails the call, for the caller to split.
    """
    job_of = {row.image_id: row.job_id for row in uploads}
    stored = {row.image_id: row.image_data for row in uploads if row.image_data is not None}
    labels = {row.image_id: row.true_label for row in uploads if row.true_label is not None}
    clock = StageClock()
    clock.seconds["fetch"] = fetch_seconds
    started = time.perf_counter()
    good_ids, images, failures = decode_batch(list(job_of), stored)
    for failure in failures:
        log.warning(
            "job %s: upload image %s failed: %s", job_of[failure.input_data_id], failure.input_data_id, failure.reason
        )
    probabilities = predict(images) if good_ids else np.zeros((0, NUM_CLASSES), dtype=np.float32)
    clock.seconds["inference"] = time.perf_counter() - started
    prediction_jobs = np.array([job_of[image_id] for image_id in good_ids], dtype=np.int64)
    job_ids = sorted(set(job_of.values()))
    failed = [(job_of[failure.input_data_id], failure) for failure in failures]
    batch = PredictionBatch.of(good_ids, probabilities, true_labels_of(good_ids, labels))
    outcome = lane.submit(
        clock.timed("store", jobs.results.store_many), model_version, job_ids, prediction_jobs, batch, failed
    ).result()
    observability.metrics.record_batch(
        observability.metrics.UPLOAD, model_version, len(uploads), *outcome, clock.seconds
    )
    # An upload is a job of one image: each new result ends one (a redelivered one stores nothing, counts nothing).
    observability.metrics.record_job_ends(observability.metrics.UPLOAD, "done", outcome[0])
    observability.metrics.record_job_ends(observability.metrics.UPLOAD, "failed", outcome[1])
    return outcome


def give_up(
    lane: DatabaseLane,
    model_version: str,
    job_id: int,
    image_id: int,
    reason: str,
    queue: str = observability.metrics.BULK,
) -> int:
    """Record one image as failed, so a poisonous image ends instead of looping; returns new failures."""
    log.error("job %s: image %s: %s", job_id, image_id, reason)
    _, failed = lane.submit(
        jobs.results.store_results, job_id, model_version, None, [FailureRow(image_id, reason)]
    ).result()
    observability.metrics.record_results(queue, model_version, 0, failed)
    if queue == observability.metrics.UPLOAD:
        observability.metrics.record_job_ends(queue, "failed", failed)
    return failed
