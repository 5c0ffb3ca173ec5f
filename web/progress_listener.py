"""One LISTEN connection per web process, shared by every request that waits for an upload's prediction.

A waiting request used to LISTEN on its own pooled connection, read every stored batch's notice
and UNLISTEN afterwards: two more round trips per upload, and each notice parsed by every
waiter. Here one daemon thread per process (a web process runs the app on threads, web/serve.py)
holds the only LISTEN connection and wakes exactly the requests whose job was announced: the
NOTIFY payload is the job id (shared/jobs/results.py), and an upload is a job of its own. It hears
the uploads' answers too (``jobs.progress.ANSWER_CHANNEL``) and keeps each one for the request waiting
for it (``answer``), which then needs no query to reply.

The thread starts on first use in the process that serves (never at import) and reconnects when
its connection drops. While it is not listening, a request listens on its own connection as
before (web/predictions.py), and every waiter looks again at least once a second whatever it
heard (jobs.progress.RECHECK_SECONDS), so a notice lost while reconnecting only delays an answer.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Iterable, Mapping

import psycopg2

from shared import jobs
from shared.db import connection

log = logging.getLogger(__name__)

# Job ids last heard, each with its upload's answer if it had one: a request registers just after
# its upload is enqueued, so the notice (and the answer) may come first.
RECENT_NOTICES = 4096
QUIET_PING_SECONDS = 10.0  # a connection that heard nothing this long is pinged, so a dead one is noticed
RECONNECT_FIRST_SECONDS, RECONNECT_MAX_SECONDS = 0.1, 2.0
CONNECT_TIMEOUT_SECONDS = 5

_listeners: dict[tuple[int, str], ProgressListener] = {}
_listeners_lock = threading.Lock()


class Waiters:
    """The threads waiting for jobs and the answers heard last, under one lock: what every listener of
    a web process shares with the Flask threads (web/predictions.ListenerNotices). This module's
    thread is one such listener; under the served app the event loop's is (web/upload_lane.AnswerListener)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, list[threading.Event]] = {}
        self._recent: collections.OrderedDict[int, jobs.progress.UploadAnswer | None] = collections.OrderedDict()
        self._generation = 0  # one more at each (re)connect: what was announced before may not have been heard
        self._listening = threading.Event()  # set while a connection listens

    def generation(self) -> int | None:
        """The current connection's number while listening, else None: read it before enqueueing what you wait for."""
        with self._lock:
            return self._generation if self._listening.is_set() else None

    def register(self, job_id: int, generation: int) -> threading.Event:
        """An event set when ``job_id`` is announced from now on, set at once if it was just announced or the
        connection changed since ``generation`` (a notice may have been missed): look again whenever it is set."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append(event)
            if job_id in self._recent or generation != self._generation or not self._listening.is_set():
                event.set()
        return event

    def unregister(self, job_id: int, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(job_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._waiters.pop(job_id, None)

    def answer(self, job_id: int) -> jobs.progress.UploadAnswer | None:
        """The upload's answer, if it was announced a moment ago (one of the last RECENT_NOTICES jobs heard)."""
        with self._lock:
            return self._recent.get(job_id)

    def wait_until_listening(self, timeout_seconds: float) -> bool:
        return self._listening.wait(timeout_seconds)

    def waiting(self) -> int:
        """Events registered now (for tests and curiosity)."""
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def _heard(self, job_ids: Iterable[int], answers: Mapping[int, jobs.progress.UploadAnswer]) -> None:
        """Wake the waiters of every job heard, on either channel, and keep the answers among them."""
        with self._lock:
            for job_id in {*job_ids, *answers}:
                # An upload's answer never changes: a later notice of its job (a redelivery's no-op) keeps it.
                self._recent[job_id] = answers.get(job_id) or self._recent.get(job_id)
                self._recent.move_to_end(job_id)
                for event in self._waiters.get(job_id, ()):
                    event.set()
            while len(self._recent) > RECENT_NOTICES:
                self._recent.popitem(last=False)

    def _connection_changed(self, connected: bool) -> None:
        """A connection began or ended listening: every waiter looks again (a notice may have been missed)."""
        with self._lock:
            if connected:
                self._generation += 1
                self._listening.set()
            else:
                self._listening.clear()
            for events in self._waiters.values():
                for event in events:
                    event.set()


class ProgressListener(Waiters):
    """A daemon thread that dispatches job-progress notices to the threads waiting for those jobs."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self._database_url = database_url
        self._stopping = threading.Event()
        self._conn: connection.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="progress-listener", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_seconds: float = QUIET_PING_SECONDS + CONNECT_TIMEOUT_SECONDS) -> None:
        """End the thread, which closes its connection once it next wakes (tests; a web process just exits)."""
        self._stopping.set()
        self._thread.join(timeout_seconds)

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection (tests kill it), None while not connected."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None and self._listening.is_set() else None

    def _run(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while not self._stopping.is_set():
            conn = None
            try:
                conn = connection.connect(self._database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
                conn.autocommit = True
                jobs.progress.listen(conn, answers=True)
                self._conn = conn
                self._connection_changed(True)
                delay = RECONNECT_FIRST_SECONDS
                self._dispatch(conn)
            except (psycopg2.Error, OSError, ValueError) as error:  # ValueError: a payload that is not ours
                if not self._stopping.is_set():
                    log_reconnect("progress listener", error, delay)
            finally:
                self._conn = None
                self._connection_changed(False)  # they look again, and again each second until it listens again
                if conn is not None:
                    conn.close()
            self._stopping.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _dispatch(self, conn: connection.Connection) -> None:
        while not self._stopping.is_set():
            heard, answers = jobs.progress.wait_for_notices(conn, QUIET_PING_SECONDS)
            if heard or answers:
                self._heard(heard, answers)
            else:
                connection.ping(conn)


def log_reconnect(listener: str, error: BaseException, delay: float) -> None:
    """A listener lost (or could not open) its connection: the first failure in a row at warning, the retries quieter."""
    level = logging.WARNING if delay == RECONNECT_FIRST_SECONDS else logging.DEBUG
    log.log(level, "%s: %s; reconnecting in %.1f s", listener, str(error).strip() or type(error).__name__, delay)


def for_database(database_url: str) -> ProgressListener:
    """This process's listener for ``database_url``, started now if there is none (or its thread ended)."""
    key = (os.getpid(), database_url)  # a thread does not cross a fork: each process starts its own
    with _listeners_lock:
        listener = _listeners.get(key)
        if listener is None or not listener.alive:
            listener = _listeners[key] = ProgressListener(database_url)
        return listener
