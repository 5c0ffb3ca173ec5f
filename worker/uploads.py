"""The upload consumer: pictures from the upload queue, predicted in micro-batches.

    python -m worker.uploads

``python -m worker`` starts one beside the bulk Celery worker, at normal CPU priority with
one inference thread. It is not a Celery worker: an upload is well under a millisecond of
inference, and Celery's delivery costs several (see shared/queues.uploads.py for how a
dead consumer's uploads are taken back).

Like Triton's dynamic batcher, it takes up to UPLOAD_MAX_BATCH waiting uploads at once,
waiting at most UPLOAD_MAX_DELAY_MS for more when fewer wait, predicts them in one model
call and stores them in one transaction (``shared.jobs.results.store_many``). A batch that
fails is split and its halves tried again, so a poison upload fails alone. Uploads of a batch
that name different model versions are predicted version by version (worker/models.py), then
by their shadow versions, if any, once their own results are stored.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import psycopg.errors
import redis.exceptions

from shared import jobs, models, observability, queues
from shared.config import Settings, load_settings
from shared.db.connection import TRANSIENT_ERRORS
from shared.jobs.results import UnknownJobError
from shared.models.store import UploadRow
from worker.batch import DatabaseLane, give_up, process_uploads
from worker.models import ModelCache, ModelUnavailable, require_version
from worker.shadow import predict_shadow

log = logging.getLogger(__name__)

UPLOAD_THREADS = 1  # one image per call: more threads only add hand-over cost
WAIT_SECONDS = 1.0  # one blocking wait for an upload; also how long a stop may take
HOUSEKEEPINGS_PER_HEARTBEAT = 3  # beat (and look for dead consumers) well before the heartbeat expires
RETRY_BACKOFF_MAX_SECONDS = 30
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *TRANSIENT_ERRORS)


class UploadConsumer:
    def __init__(self, config: Settings, models: ModelCache) -> None:
        self.config = config
        self.name = queues.uploads.new_consumer_name()
        self.models = models
        self.lane = DatabaseLane(config.database_url, threaded=False)
        self.stopping = threading.Event()
        self._held: list[bytes] = []  # taken but not yet stored: retried after an outage
        self._finished: list[bytes] = []  # stored, still in the processing list until the next take
        self._next_housekeeping = 0.0

    def run(self) -> None:
        """Until ``stopping`` is set; outages of Redis or PostgreSQL are waited out, never fatal."""
        outages = 0
        log.info("upload consumer %s ready on %s", self.name, queues.uploads.queue_name(self.config))
        while not self.stopping.is_set():
            if self.config.worker_liveness_file:  # for the liveness probe: the loop turns, outages included
                self.config.worker_liveness_file.touch()
            try:
                self.serve_one()
                outages = 0
            except OUTAGE_ERRORS as error:
                outages += 1
                backoff = min(RETRY_BACKOFF_MAX_SECONDS, 2 ** (outages - 1) * 0.1)
                log.warning(
                    "upload consumer %s: %s unavailable (%s); retry in %.1fs",
                    self.name,
                    outage_of(error),
                    error,
                    backoff,
                )
                self.wait_out(backoff)
        try:
            queues.uploads.finish_many(self.config, self.name, self._finished)
            queues.uploads.leave(self.config, self.name)
        except OUTAGE_ERRORS:
            log.warning(
                "upload consumer %s stopped without Redis; what it held returns when its heartbeat expires", self.name
            )

    def serve_one(self) -> None:
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping()
        if not self._held:
            delay, most = self.config.upload_max_delay_ms / 1000, self.config.upload_max_batch
            self._held = queues.uploads.take_batch(self.config, self.name, most, WAIT_SECONDS, delay, self._finished)
            self._finished = []
            record_queue_wait(self._held)
        if self._held:
            self.handle_batch(self._held)
            # Stored: forgotten in Redis by the next take's round trip (or on stopping).
            self._finished, self._held = self._held, []

    def wait_out(self, seconds: float) -> None:
        """An outage's backoff, still beating while Redis answers: a consumer waiting for PostgreSQL is
        not dead, and the uploads it holds must not be taken back, marked with a death they did not cause."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if time.monotonic() >= self._next_housekeeping:
                try:
                    self.housekeeping()
                except OUTAGE_ERRORS:  # Redis is out: no beat can reach it before it is back
                    self.stopping.wait(deadline - time.monotonic())
                    return
            self.stopping.wait(min(deadline, self._next_housekeeping) - time.monotonic())

    def housekeeping(self) -> None:
        queues.uploads.beat(self.config, self.name)
        moved = queues.uploads.requeue_orphans(self.config)
        if moved:
            log.warning("upload consumer %s: took back %d uploads held by consumers that died", self.name, moved)
        self._next_housekeeping = time.monotonic() + self.config.upload_heartbeat_seconds / HOUSEKEEPINGS_PER_HEARTBEAT

    def handle_batch(self, entries: list[bytes]) -> None:
        """Predict and store a micro-batch; an outage propagates, anything else ends with results or log lines.

        A batch is fresh entries only, or one entry a consumer died holding (``take_batch``):
        that one is given up on after MAX_DELIVERIES, by the policy both lanes share.
        """
        uploads = []
        for entry in entries:
            try:
                job_id, image_id, deaths = queues.uploads.decode_entry(entry)
            except ValueError:
                log.error("upload consumer %s: dropping %r, which is not an upload queue entry", self.name, entry)
                continue
            if jobs.service.next_step(deaths + 1, 1) is jobs.service.NextStep.GIVE_UP:
                self.store_failure(job_id, image_id, jobs.service.gave_up_reason())
            else:
                uploads.append((job_id, image_id))
        if uploads:
            self.predict(uploads)
        stored = time.time()  # every upload of the batch has its result (or was dropped): their latencies
        observability.metrics.record_upload_latencies(
            stored - accepted for accepted in map(queues.uploads.accepted_at, entries) if accepted is not None
        )

    def predict(self, uploads: list[tuple[int, int]]) -> None:
        """Each version's uploads in one model call and one transaction, then the shadows'. One query
        finds the versions and reads the images (``upload_batch``); an upload whose job is gone is dropped."""
        started = time.perf_counter()
        rows = self.lane.submit(models.store.upload_batch, uploads).result()
        fetch_seconds = time.perf_counter() - started
        found = {(row.job_id, row.image_id) for row in rows}
        for job_id, image_id in uploads:
            if (job_id, image_id) not in found:
                log.error("job %s does not exist; dropping upload of image %s", job_id, image_id)
        by_version: dict[str | None, list[UploadRow]] = {}
        by_shadow: dict[str, list[tuple[int, int]]] = {}
        for row in rows:
            by_version.setdefault(row.version, []).append(row)
            if row.shadow:
                by_shadow.setdefault(row.shadow, []).append((row.job_id, row.image_id))
        for version, group in by_version.items():
            self.predict_with(version, group, fetch_seconds)
        for shadow, shadowed in by_shadow.items():  # after every upload of the batch is answered
            predict_shadow(self.lane, self.models, shadow, shadowed)

    def predict_with(self, version: str | None, uploads: list[UploadRow], fetch_seconds: float = 0.0) -> None:
        """One model call and one transaction; on failure the batch is split and the halves tried
        again, as the bulk lane does, so a poison upload fails alone and never its neighbours."""
        try:
            version = require_version(version)
            predictor = self.models.predictor(self.lane, version)
        except ModelUnavailable as error:  # not registered, or its file does not load: these uploads fail, with why
            for row in uploads:
                self.store_failure(row.job_id, row.image_id, str(error), version)
            return None
        try:
            process_uploads(self.lane, predictor.predict_batch, version, uploads, fetch_seconds)
        except OUTAGE_ERRORS:
            raise
        except (psycopg.errors.ForeignKeyViolation, UnknownJobError):
            if len(uploads) > 1:
                return self.split(version, uploads, "a job that does not exist")
            log.error("job %s does not exist; dropping upload of image %s", uploads[0].job_id, uploads[0].image_id)
        except Exception as error:  # the model or our code failed on this input: isolate it, never loop
            if len(uploads) > 1:
                return self.split(version, uploads, repr(error))
            log.exception("job %s: upload of image %s failed", uploads[0].job_id, uploads[0].image_id)
            self.store_failure(
                uploads[0].job_id, uploads[0].image_id, jobs.service.prediction_failed_reason(error), version
            )
        return None

    def split(self, version: str | None, uploads: list[UploadRow], why: str) -> None:
        log.warning("upload consumer %s: batch of %d uploads split after %s", self.name, len(uploads), why)
        middle = len(uploads) // 2
        self.predict_with(version, uploads[:middle])
        self.predict_with(version, uploads[middle:])

    def store_failure(self, job_id: int, image_id: int, reason: str, version: str | None = None) -> None:
        """``version``: the one the upload asked for, the failure's model_version in the metrics
        (none: not looked up yet)."""
        try:
            give_up(self.lane, version or "", job_id, image_id, reason, observability.metrics.UPLOAD)
        except (psycopg.errors.ForeignKeyViolation, UnknownJobError):
            log.error("job %s does not exist; dropping upload of image %s", job_id, image_id)


def record_queue_wait(entries: list[bytes]) -> None:
    """The micro-batch's wait in the queue: its oldest upload's, from the web accepting it to this take."""
    accepted = [stamp for stamp in map(queues.uploads.accepted_at, entries) if stamp is not None]
    if accepted:
        observability.metrics.record_queue_wait(observability.metrics.UPLOAD, time.time() - min(accepted))


def outage_of(error: Exception) -> str:
    return "PostgreSQL" if isinstance(error, TRANSIENT_ERRORS) else "Redis"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    config = load_settings()
    consumer = UploadConsumer(config, ModelCache(config, UPLOAD_THREADS))
    consumer.models.warm_up(consumer.lane)  # production's, loaded and allocated before the first upload
    observability.metrics.record_process(observability.metrics.UPLOAD_CONSUMER)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: consumer.stopping.set())
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
