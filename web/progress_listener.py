"""The one way a web request waits for an upload's prediction: one LISTEN connection per web process.

The web is Flask on granian's WSGI threads (web/serve.py); a request that waits holds its thread and
sleeps on a ``threading.Event``. One daemon thread per process holds the only LISTEN connection and
wakes exactly the requests whose job was announced: the NOTIFY payload is the job id
(shared/jobs/results.py), and an upload is a job of its own. It hears the uploads' answers too
(``jobs.progress.ANSWER_CHANNEL``) and keeps each one for the request waiting for it (``answer``),
which then needs no query to reply.

The thread starts on first use in the process that serves (never at import) and reconnects with
backoff when its connection drops. Every waiter looks again at each (re)connect and at least once
a second whatever it heard (jobs.progress.RECHECK_SECONDS), so while it is not listening a wait
becomes a look each second and a notice lost while reconnecting only delays an answer.

Waits hold threads, so they may hold only WEB_THREADS - RESERVED_THREADS of them at once (``hold``):
the health checks and the pages always find a thread, and an upload past that answers at once, queued.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping

import psycopg

from shared import jobs
from shared.db import connection

log = logging.getLogger(__name__)

# Job ids last heard, each with its upload's answer if it had one: a request registers just after
# its upload is enqueued, so the notice (and the answer) may come first.
RECENT_NOTICES = 4096
QUIET_PING_SECONDS = 10.0  # a connection that heard nothing this long is pinged, so a dead one is noticed
RECONNECT_FIRST_SECONDS, RECONNECT_MAX_SECONDS = 0.1, 2.0
CONNECT_TIMEOUT_SECONDS = 5
# Threads of a process that no wait may hold: /healthz, /readyz and the pages are answered while uploads wait.
RESERVED_THREADS = 4

_listeners: dict[tuple[int, str], ProgressListener] = {}
_listeners_lock = threading.Lock()


class Waiters:
    """The threads waiting for jobs and the answers heard last, under one lock; ``ProgressListener`` feeds it."""

    def __init__(self, most_waits: int | None = None) -> None:
        """``most_waits``: how many threads may wait at once (None: no bound)."""
        self._slots = threading.BoundedSemaphore(most_waits) if most_waits else None
        self._lock = threading.Lock()
        self._waiters: dict[int, list[threading.Event]] = {}
        self._recent: collections.OrderedDict[int, jobs.progress.UploadAnswer | None] = collections.OrderedDict()
        self._generation = 0  # one more at each (re)connect: what was announced before may not have been heard
        self._listening = threading.Event()  # set while a connection listens

    def generation(self) -> int | None:
        """The current connection's number while listening, else None: read it before enqueueing what you wait for."""
        with self._lock:
            return self._generation if self._listening.is_set() else None

    def register(self, job_id: int, generation: int | None) -> threading.Event:
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

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """A place among the threads that may wait: True while held, False when they are all taken (answer at once)."""
        if self._slots is None:
            yield True
        elif self._slots.acquire(blocking=False):
            try:
                yield True
            finally:
                self._slots.release()
        else:
            yield False

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

    def __init__(self, database_url: str, most_waits: int | None = None) -> None:
        super().__init__(most_waits)
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
            except (psycopg.Error, OSError, ValueError) as error:  # ValueError: a payload that is not ours
                if not self._stopping.is_set():  # the first failure in a row at warning, the retries quieter
                    level = logging.WARNING if delay == RECONNECT_FIRST_SECONDS else logging.DEBUG
                    reason = str(error).strip() or type(error).__name__
                    log.log(level, "progress listener: %s; reconnecting in %.1f s", reason, delay)
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


def for_process(database_url: str, threads: int) -> ProgressListener:
    """This process's listener for ``database_url``, started now if there is none (or its thread ended);
    its waits hold at most ``threads`` (WEB_THREADS) - RESERVED_THREADS threads."""
    key = (os.getpid(), database_url)  # a thread does not cross a fork: each process starts its own
    with _listeners_lock:
        listener = _listeners.get(key)
        if listener is None or not listener.alive:
            listener = _listeners[key] = ProgressListener(database_url, max(1, threads - RESERVED_THREADS))
        return listener
