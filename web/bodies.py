"""Request bodies: read whole, before anything else, by a bounded number of threads.

granian hands a request to a thread once its headers are in, and the thread reads the body as the
client sends it: a client that trickles a body holds a thread for as long as it likes, and granian
has no deadline for bodies (only for headers, web/serve.py). So a thread may start reading a body
only while fewer than BODY_READERS of this process's threads are (and fewer than PER_CLIENT of
them for that client). A request that finds no place waits a moment for one, since a body that
arrives at once takes its place only briefly; past SLOT_WAIT_SECONDS the answer is 503 with
Retry-After and nothing is read. The health checks, the pages and the waits (web/progress_listener.py) keep their
threads.

The body is read here, at once, into the request's cache (never more than MAX_CONTENT_LENGTH:
werkzeug stops a longer one with a 413, chunked or not), and the form is parsed from that copy.
A client that goes away in the middle is no error of ours: its request ends without an answer
and without a 500 in the log.
"""

from __future__ import annotations

import collections
import logging
import threading

from flask import Flask, current_app, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, ServiceUnavailable

from shared import observability
from shared.config import Settings
from web import limits, progress_listener

log = logging.getLogger(__name__)

PER_CLIENT = 4
SLOT_WAIT_SECONDS = 0.5
RETRY_AFTER_SECONDS = 1
EXTENSION = "mnist_body_readers"


class ClientGone(HTTPException):
    """The client closed its connection before its body arrived: no one is there to read an answer."""

    code = 400
    description = "the client closed the connection before sending the whole body"


class BodyReaders:
    """How many threads of this process read bodies now, in all and per client."""

    def __init__(self, limit: int, per_client: int = PER_CLIENT) -> None:
        self.limit = limit
        self.per_client = per_client
        self._changed = threading.Condition()
        self._reading = 0
        self._by_client: collections.Counter[str] = collections.Counter()

    def enter(self, client: str, wait_seconds: float = 0.0) -> bool:
        """Take a place for ``client``, waiting up to ``wait_seconds`` for one; False when none came."""
        with self._changed:
            free = self._changed.wait_for(
                lambda: self._reading < self.limit and self._by_client[client] < self.per_client, wait_seconds
            )
            if not free:
                return False
            self._reading += 1
            self._by_client[client] += 1
            return True

    def leave(self, client: str) -> None:
        with self._changed:
            self._reading -= 1
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]
            self._changed.notify_all()


def body_readers_for(threads: int) -> int:
    """Half the threads the waits may take: waits and body reads together leave the reserved ones free."""
    return max(1, (threads - progress_listener.RESERVED_THREADS) // 2)


def init_app(app: Flask, config: Settings) -> None:
    """Before every other before-request hook (the CSRF check reads the form)."""
    app.extensions[EXTENSION] = BodyReaders(body_readers_for(config.web_threads))
    app.before_request(read_body)


def has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def read_body() -> None:
    if not has_body():
        return
    readers: BodyReaders = current_app.extensions[EXTENSION]
    client = limits.client_key()
    if not readers.enter(client, SLOT_WAIT_SECONDS):
        observability.metrics.record_refusal(ServiceUnavailable.code, "body_readers")
        raise ServiceUnavailable(
            "too many requests are sending their bodies to this server right now; try again shortly",
            retry_after=RETRY_AFTER_SECONDS,
        )
    try:
        request.get_data(cache=True, parse_form_data=False)
    except ClientDisconnected:
        raise ClientGone() from None
    except OSError as error:  # the server's reader says the connection went away
        log.info("client went away during its body: %s", error)
        raise ClientGone() from None
    finally:
        readers.leave(client)
