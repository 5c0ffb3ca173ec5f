"""A background thread in each worker process that resumes stalled jobs.

Every process runs one; an advisory lock lets only one sweep at a time across all
workers, so scaling workers does not multiply the re-enqueued work.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from shared import db
from shared.config import Settings
from shared.recovery import SWEEPER_LOCK_KEY, sweep_stalled_jobs

log = logging.getLogger(__name__)


def sweep_once(app: Celery, settings: Settings) -> dict[int, int]:
    conn = db.connect(settings.database_url)
    try:
        if not db.try_lock(conn, SWEEPER_LOCK_KEY):
            return {}
        return sweep_stalled_jobs(conn, app, settings)
    finally:
        conn.close()  # also releases the advisory lock


def run_forever(app: Celery, settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.sweep_interval_seconds):
        try:
            sweep_once(app, settings)
        except Exception:  # a database or broker outage must not kill the thread; next round retries
            log.exception("sweep for stalled jobs failed")


def start(app: Celery, settings: Settings) -> threading.Event:
    """Start the daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(app, settings, stop), name="sweeper", daemon=True).start()
    return stop
