"""The upload consumer: pictures from the upload queue, predicted in micro-batches.

    python -m worker.uploads

``python -m worker`` starts one beside the bulk Celery worker, at normal CPU priority with
one inference thread. It is not a Celery worker: an upload is well under a millisecond of
inference, and Celery's delivery costs several (see shared/upload_queue.py for how a
dead consumer's uploads are taken back).

Like Triton's dynamic batcher, it takes up to UPLOAD_MAX_BATCH waiting uploads at once,
waiting at most UPLOAD_MAX_DELAY_MS for more when fewer wait, predicts them in one model
call and stores them in one transaction (``shared.db.results.store_many``). A batch that
fails is split and its halves tried again, so a poison upload fails alone.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import numpy as np
import psycopg2.errors
import redis.exceptions

from shared import jobs, upload_queue
from shared.config import Settings, load_settings
from shared.db.connection import TRANSIENT_ERRORS
from shared.db.results import UnknownJobError
from shared.digits import IMAGE_SHAPE
from shared.inference import Predictor, load_predictor
from shared.model_info import model_version
from worker.batch import DatabaseLane, give_up, process_uploads

log = logging.getLogger(__name__)

UPLOAD_THREADS = 1  # one image per call: more threads only add hand-over cost
WAIT_SECONDS = 1.0  # one blocking wait for an upload; also how long a stop may take
HOUSEKEEPINGS_PER_HEARTBEAT = 3  # beat (and look for dead consumers) well before the heartbeat expires
RETRY_BACKOFF_MAX_SECONDS = 30
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *TRANSIENT_ERRORS)


class UploadConsumer:
    def __init__(self, config: Settings, predictor: Predictor) -> None:
        self.config = config
        self.name = upload_queue.new_consumer_name()
        self.predictor = predictor
        self.model_version = model_version(config.model_path)
        self.lane = DatabaseLane(config.database_url)
        self.stopping = threading.Event()
        self._held: list[bytes] = []  # taken but not yet stored: retried after an outage
        self._finished: list[bytes] = []  # stored, still in the processing list until the next take
        self._next_housekeeping = 0.0

    def run(self) -> None:
        """Until ``stopping`` is set; outages of Redis or PostgreSQL are waited out, never fatal."""
        outages = 0
        log.info("upload consumer %s ready on %s", self.name, upload_queue.queue_name(self.config))
        while not self.stopping.is_set():
            if self.config.worker_liveness_file:  # for the liveness probe: the loop turns, outages included
                self.config.worker_liveness_file.touch()
            try:
                self.serve_one()
                outages = 0
            except OUTAGE_ERRORS as error:
                outages += 1
                backoff = min(RETRY_BACKOFF_MAX_SECONDS, 2 ** (outages - 1) * 0.1)
                log.warning("upload consumer %s: %s unavailable (%s); retry in %.1fs", self.name, outage_of(error), error, backoff)
                self.stopping.wait(backoff)
        try:
            upload_queue.finish_many(self.config, self.name, self._finished)
            upload_queue.leave(self.config, self.name)
        except OUTAGE_ERRORS:
            log.warning("upload consumer %s stopped without Redis; what it held returns when its heartbeat expires", self.name)

    def serve_one(self) -> None:
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping()
        if not self._held:
            delay, most = self.config.upload_max_delay_ms / 1000, self.config.upload_max_batch
            self._held = upload_queue.take_batch(self.config, self.name, most, WAIT_SECONDS, delay, self._finished)
            self._finished = []
        if self._held:
            self.handle_batch(self._held)
            # Stored: forgotten in Redis by the next take's round trip (or on stopping).
            self._finished, self._held = self._held, []

    def housekeeping(self) -> None:
        upload_queue.beat(self.config, self.name)
        moved = upload_queue.requeue_orphans(self.config)
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
                job_id, image_id, deaths = upload_queue.decode_entry(entry)
            except ValueError:
                log.error("upload consumer %s: dropping %r, which is not an upload queue entry", self.name, entry)
                continue
            if jobs.next_step(deaths + 1, 1) is jobs.NextStep.GIVE_UP:
                self.store_failure(job_id, image_id, jobs.gave_up_reason())
            else:
                uploads.append((job_id, image_id))
        if uploads:
            self.predict(uploads)

    def predict(self, uploads: list[tuple[int, int]]) -> None:
        """One model call and one transaction; on failure the batch is split and the halves tried
        again, as the bulk lane does, so a poison upload fails alone and never its neighbours."""
        try:
            process_uploads(self.lane, self.predictor.predict_batch, self.model_version, uploads)
        except OUTAGE_ERRORS:
            raise
        except (psycopg2.errors.ForeignKeyViolation, UnknownJobError):
            if len(uploads) > 1:
                return self.split(uploads, "a job that does not exist")
            log.error("job %s does not exist; dropping upload of image %s", *uploads[0])
        except Exception as error:  # the model or our code failed on this input: isolate it, never loop
            if len(uploads) > 1:
                return self.split(uploads, repr(error))
            log.exception("job %s: upload of image %s failed", *uploads[0])
            self.store_failure(*uploads[0], jobs.prediction_failed_reason(error))
        return None

    def split(self, uploads: list[tuple[int, int]], why: str) -> None:
        log.warning("upload consumer %s: batch of %d uploads split after %s", self.name, len(uploads), why)
        middle = len(uploads) // 2
        self.predict(uploads[:middle])
        self.predict(uploads[middle:])

    def store_failure(self, job_id: int, image_id: int, reason: str) -> None:
        try:
            give_up(self.lane, self.model_version, job_id, image_id, reason)
        except (psycopg2.errors.ForeignKeyViolation, UnknownJobError):
            log.error("job %s does not exist; dropping upload of image %s", job_id, image_id)


def outage_of(error: Exception) -> str:
    return "PostgreSQL" if isinstance(error, TRANSIENT_ERRORS) else "Redis"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    config = load_settings()
    predictor = load_predictor(config.model_path, config.model_runtime, UPLOAD_THREADS)
    predictor.predict_batch(np.zeros((1, *IMAGE_SHAPE), dtype=np.uint8))  # load and allocate before the first upload
    consumer = UploadConsumer(config, predictor)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: consumer.stopping.set())
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
