"""The upload consumer: single pictures from the upload queue, predicted one at a time.

    python -m worker.uploads

``python -m worker`` starts one beside the bulk Celery worker, at normal CPU priority with
one inference thread. It is not a Celery worker: an upload is well under a millisecond of
inference, and Celery's delivery costs several (see shared/upload_queue.py for how a
dead consumer's uploads are taken back). An upload is stored exactly as a bulk batch of
one image is, by the same code.
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
from worker.batch import DatabaseLane, give_up, process_batch

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
        self._held: bytes | None = None  # taken but not yet stored: retried after an outage
        self._next_housekeeping = 0.0

    def run(self) -> None:
        """Until ``stopping`` is set; outages of Redis or PostgreSQL are waited out, never fatal."""
        outages = 0
        log.info("upload consumer %s ready on %s", self.name, upload_queue.queue_name(self.config))
        while not self.stopping.is_set():
            try:
                self.serve_one()
                outages = 0
            except OUTAGE_ERRORS as error:
                outages += 1
                backoff = min(RETRY_BACKOFF_MAX_SECONDS, 2 ** (outages - 1) * 0.1)
                log.warning("upload consumer %s: %s unavailable (%s); retry in %.1fs", self.name, outage_of(error), error, backoff)
                self.stopping.wait(backoff)
        try:
            upload_queue.leave(self.config, self.name)
        except OUTAGE_ERRORS:
            log.warning("upload consumer %s stopped without Redis; what it held returns when its heartbeat expires", self.name)

    def serve_one(self) -> None:
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping()
        if self._held is None:
            self._held = upload_queue.take(self.config, self.name, WAIT_SECONDS)
        if self._held is not None:
            self.handle(self._held)
            upload_queue.finish(self.config, self.name, self._held)
            self._held = None

    def housekeeping(self) -> None:
        upload_queue.beat(self.config, self.name)
        moved = upload_queue.requeue_orphans(self.config)
        if moved:
            log.warning("upload consumer %s: took back %d uploads held by consumers that died", self.name, moved)
        self._next_housekeeping = time.monotonic() + self.config.upload_heartbeat_seconds / HOUSEKEEPINGS_PER_HEARTBEAT

    def handle(self, entry: bytes) -> None:
        """Predict and store one upload; an outage propagates, anything else ends with a result or a log line."""
        try:
            job_id, image_id, deaths = upload_queue.decode_entry(entry)
        except ValueError:
            log.error("upload consumer %s: dropping %r, which is not an upload queue entry", self.name, entry)
            return
        try:
            if jobs.next_step(deaths + 1, 1) is jobs.NextStep.GIVE_UP:
                give_up(self.lane, self.model_version, job_id, image_id, jobs.gave_up_reason())
            else:
                self.predict(job_id, image_id)
        except (psycopg2.errors.ForeignKeyViolation, UnknownJobError):
            log.error("job %s does not exist; dropping upload of image %s", job_id, image_id)

    def predict(self, job_id: int, image_id: int) -> None:
        try:
            process_batch(self.lane, self.predictor.predict_batch, self.model_version, job_id, [image_id])
        except (*OUTAGE_ERRORS, psycopg2.errors.ForeignKeyViolation, UnknownJobError):
            raise
        except Exception as error:  # the model or our code failed on this input: record it, never loop
            log.exception("job %s: upload of image %s failed", job_id, image_id)
            give_up(self.lane, self.model_version, job_id, image_id, jobs.prediction_failed_reason(error))


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
