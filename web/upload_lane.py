"""``POST /api/predictions`` answered on the event loop: a waiting upload holds no thread.

Under the Flask route each upload held one of a process's threads from its first byte to its
answer, and every step was a hand-over between threads: the server's to the app's, the app's
blocking round trips to PostgreSQL and Redis, the listener thread's wake-up of the waiting one
(about 20 context switches per upload, a quarter of the web's CPU in a burst). Here one event
loop per web process (granian's ASGI worker, web/asgi.py) runs the upload from body to answer:
asyncpg stores it (shared/db/upload_lane.py), redis.asyncio enqueues it, and one LISTEN
connection per process (``AnswerListener``) resolves the waiting request's future with the
answer the worker's NOTIFY carries. In one run on two cores the web's CPU per answered upload
fell from 1.3 to about 0.9 ms (README, Performance, "Upload bursts").

Only the plain case comes here: a raw image body (``image/*`` or ``application/octet-stream``)
with a Content-Length within MAX_UPLOAD_BYTES, no ``Authorization`` header and no query parameter
but a valid ``wait``. Anything else (a multipart form, a token to check, ``?model=``/``?shadow=``,
a bad ``wait``, a body too large) is passed unchanged to the Flask route (``accepts``), so every
option and refusal there keeps one implementation. What both share: preprocessing and the token
(``predictions.prepare_upload``), the per-client upload limit's count (``limits.UploadLimit``, the
same Redis keys), the statement that stores an upload, the queue's entry and bound, the answer's
JSON, the error shape and the security headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import flask
import redis.asyncio
import redis.exceptions
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError, ServiceUnavailable

from shared import jobs, models, observability, queues
from shared.config import Settings
from shared.db import connection as sync_connection
from shared.db import upload_lane as store
from web import api, errors, limits, predictions, progress_listener, security
from web.params import parse_number

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROUTE = "/api/predictions"
LOOK_AGAIN = None  # a future's result when its job was announced without an answer (a failure): read it back


class AnswerListener(progress_listener.Waiters):
    """The process's one LISTEN connection, on the loop: it resolves the future of each upload the lane
    waits for, and wakes the Flask threads of the same process that wait (``GET ?wait``, a form's
    upload) as web/progress_listener.py's thread would (``Waiters``; web/asgi.py hands it to the app),
    so a served process holds one listener, not two."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.loop: asyncio.AbstractEventLoop | None = None  # the process's loop, known from its first request
        self.waiters: dict[int, asyncio.Future[jobs.progress.UploadAnswer | None]] = {}  # the lane's, on the loop
        self.conn: asyncpg.Connection | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the loop: listen from now on (once; again if the task ended)."""
        self.loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self.run())

    def generation(self) -> int | None:
        """``Waiters.generation`` for a Flask thread; while not listening it also asks the loop to start."""
        generation = super().generation()
        if generation is None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.start)
        return generation

    def watch(self, job_id: int) -> asyncio.Future[jobs.progress.UploadAnswer | None]:
        """A future for ``job_id``'s next announcement: its answer, or ``LOOK_AGAIN``. Made before the upload is enqueued."""
        future = asyncio.get_running_loop().create_future()
        self.waiters[job_id] = future
        answer = self.answer(job_id)
        if answer is not None:
            future.set_result(answer)
        return future

    def forget(self, job_id: int, future: asyncio.Future[Any]) -> None:
        if self.waiters.get(job_id) is future:
            del self.waiters[job_id]

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection (tests kill it), None while not listening."""
        conn = self.conn
        return conn.get_server_pid() if conn is not None and super().generation() is not None else None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff; every waiter looks again at each change."""
        delay = progress_listener.RECONNECT_FIRST_SECONDS
        while True:
            conn = None
            try:
                conn = await store.connect(self.database_url)
                delay = progress_listener.RECONNECT_FIRST_SECONDS
                await self._listen(conn)
            except (*store.UNAVAILABLE, asyncpg.PostgresError, TimeoutError) as error:
                progress_listener.log_reconnect("upload lane listener", error, delay)
            finally:
                self._changed(connected=False)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, progress_listener.RECONNECT_MAX_SECONDS)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Until the connection ends: asyncpg calls the handlers as notices arrive."""
        closed = asyncio.get_running_loop().create_future()
        conn.add_termination_listener(lambda _: closed.done() or closed.set_result(None))
        await store.listen(conn, self._heard_answer, self._heard_progress)
        self.conn = conn
        self._changed(connected=True)  # what was announced before may not have been heard
        try:
            while not closed.done():
                done, _ = await asyncio.wait({closed}, timeout=progress_listener.QUIET_PING_SECONDS)
                if not done:
                    await store.ping(conn)
        finally:
            self.conn = None

    def _heard_answer(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            job_id, answer = jobs.progress.parse_answer(payload)
        except ValueError:
            log.warning("upload lane listener: ignoring %r, which is not an upload's answer", payload[:200])
            return
        self._heard((), {job_id: answer})
        self._resolve(job_id, answer)

    def _heard_progress(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A job moved: its waiters look again, unless an answer came with the notice. A batch's notices
        arrive together and asyncpg calls each handler soon after; this one's look is scheduled
        after them, so an answer announced in the same commit is taken first, with no query."""
        with contextlib.suppress(ValueError):
            asyncio.get_running_loop().call_soon(self._progressed, int(payload))

    def _progressed(self, job_id: int) -> None:
        self._heard((job_id,), {})
        self._resolve(job_id, LOOK_AGAIN)

    def _resolve(self, job_id: int, answer: jobs.progress.UploadAnswer | None) -> None:
        future = self.waiters.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(answer)

    def _changed(self, connected: bool) -> None:
        """The connection began or ended listening: the threads' waiters and the lane's look again."""
        self._connection_changed(connected)
        for future in self.waiters.values():
            if not future.done():
                future.set_result(LOOK_AGAIN)
        self.waiters.clear()


class UploadLane:
    """One per web process: its asyncpg pool, Redis client and listener are made on first use, on the loop."""

    def __init__(self, config: Settings, pages: flask.Flask) -> None:
        self.config = config
        self.pages = pages  # the Flask app: its URL map builds the answer's links, its JSON provider the body
        self.listener = AnswerListener(config.database_url)
        self.redis = redis.asyncio.Redis.from_url(config.redis_url, socket_timeout=30, socket_connect_timeout=5)
        self.queue = queues.uploads.queue_name(config)
        self.limit = limits.UploadLimit(config) if config.upload_rate_limit else None
        self.pool: asyncpg.Pool | None = None
        self.opening = asyncio.Lock()

    def accepts(self, scope: Scope) -> bool:
        """Whether the request is the plain upload this lane serves; anything else goes to the Flask route."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != ROUTE:
            return False
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").partition(b";")[0].strip().decode("latin-1").lower()
        length = headers.get(b"content-length", b"")
        if b"authorization" in headers or not kind.startswith(api.RAW_IMAGE_TYPES) or not length.isdigit():
            return False
        return int(length) <= self.config.max_upload_bytes and wait_seconds(scope["query_string"]) is not None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the upload: 200 with its prediction, 202 while queued, or an error in the API's shape."""
        accepted = time.time()
        secure = is_secure(scope, self.config.trusted_proxy_hops)
        try:
            wait = wait_seconds(scope["query_string"]) or 0.0  # a valid one: accepts() looked
            status, body, headers = await self.answer(scope, await read_body(receive), accepted, wait)
        except ClientGone:
            return
        except HTTPException as error:
            status, body, headers = self.refusal(error)
        except asyncpg.UndefinedTableError as error:
            status, body, headers = self.unavailable("schema", errors.SCHEMA_MISSING, error)
        except (*store.UNAVAILABLE, asyncpg.PostgresError) as error:
            status, body, headers = self.unavailable("database", errors.DATABASE_UNAVAILABLE, error)
        except redis.exceptions.RedisError as error:
            status, body, headers = self.unavailable("broker", errors.BROKER_UNAVAILABLE, error)
        except Exception:
            log.exception("unexpected error during POST %s", ROUTE)
            status, body = InternalServerError.code, errors.error_body(InternalServerError.code, errors.UNEXPECTED)
            headers = {}
        encoded = self.pages.json.response(body).get_data()
        fields = {**security.response_headers(secure), **headers, "Content-Type": "application/json", "Content-Length": str(len(encoded))}
        await send({"type": "http.response.start", "status": status, "headers": [(k.encode(), v.encode()) for k, v in fields.items()]})
        await send({"type": "http.response.body", "body": encoded})

    async def answer(self, scope: Scope, data: bytes, accepted: float, wait: float) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.limit is not None:
            await self.limit.count(client_address(scope, self.config.trusted_proxy_hops))
        await self.refuse_when_queue_full()
        try:
            upload = predictions.prepare_upload(self.config, data, None)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        pool = await self.open()
        created = await store.create_named_upload_job(pool, upload.image, models.registry.PRODUCTION, upload.selection, upload.token)
        if created is None:
            predictions.raise_unavailable(models.registry.unknown(models.registry.PRODUCTION), asked=False)
        prediction = upload.queued(*created)
        heard = self.listener.watch(prediction.id) if wait else None  # before the push: its notice cannot be missed
        try:
            await self.enqueue(prediction, accepted)
        except BaseException:
            if heard is not None:
                self.listener.forget(prediction.id, heard)
            raise
        if heard is not None:
            prediction = await self.await_prediction(pool, prediction, heard, wait)
        body = predictions.prediction_body(prediction, self.url(scope))
        return predictions.answer_status(prediction, wait, just_created=True), body, {"Location": body["status_url"]}

    async def open(self) -> asyncpg.Pool:
        """The pool and the listener, made in the process that serves, on its loop."""
        if self.pool is None:
            async with self.opening:
                if self.pool is None:
                    self.pool = await store.connect_pool(self.config.database_url, self.config.web_threads)
        self.listener.start()
        return self.pool

    async def close(self) -> None:
        """Stop listening and close the connections (tests; a web process just exits)."""
        await self.listener.stop()
        if self.pool is not None:
            await self.pool.close()
        await self.redis.aclose()

    async def refuse_when_queue_full(self) -> None:
        """``predictions.refuse_when_queue_full``, awaited: a look at the queue only when it may be near the bound."""
        if predictions.must_look_at_queue(self.config):
            predictions.refuse_when_waiting(self.config, int(await self.redis.llen(self.queue)))

    async def enqueue(self, prediction: predictions.Prediction, accepted: float) -> None:
        """Push the upload's entry; if Redis refuses, remove the upload again (as ``shared.jobs.service`` does) and re-raise."""
        entry = queues.uploads.encode_entry(prediction.id, prediction.image_id, accepted_at=accepted)
        try:
            queues.uploads.record_push(self.config, int(await self.redis.lpush(self.queue, entry)))
        except redis.exceptions.RedisError:
            await asyncio.to_thread(delete_upload, self.config.database_url, prediction.id, prediction.image_id)
            raise

    async def await_prediction(
        self, pool: asyncpg.Pool, queued: predictions.Prediction, heard: asyncio.Future[jobs.progress.UploadAnswer | None], seconds: float
    ) -> predictions.Prediction:
        """The answer its notice carries, else the stored state read back: after a notice without an answer
        (a failure), a reconnect of the listener, or each RECHECK_SECONDS, so a missed notice only delays it."""
        deadline = time.monotonic() + seconds
        prediction = queued
        try:
            while not prediction.finished and (left := deadline - time.monotonic()) > 0:
                done, _ = await asyncio.wait({heard}, timeout=min(left, jobs.progress.RECHECK_SECONDS))
                answer = heard.result() if done else LOOK_AGAIN
                if answer is not None:
                    return queued.answered(answer)
                self.listener.forget(queued.id, heard)
                heard = self.listener.watch(queued.id)  # before the look, so a notice after it is heard
                prediction = predictions.prediction_from_row(await store.upload_prediction(pool, queued.id)) or prediction
            return prediction
        finally:
            self.listener.forget(queued.id, heard)

    def url(self, scope: Scope) -> Callable[[str, str], str]:
        """``url_for`` outside a request: the Flask app's URL map, under the prefix the server was mounted at."""
        adapter = self.pages.url_map.bind("localhost", script_name=scope.get("root_path") or "/")
        return lambda endpoint, token: adapter.build(endpoint, {"token": token})

    def refusal(self, error: HTTPException) -> tuple[int, dict[str, Any], dict[str, str]]:
        code = error.code or InternalServerError.code
        return code, errors.error_body(code, error.description or error.name), errors.error_headers(error)

    def unavailable(self, service: str, message: str, error: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
        """503 in the Flask route's words for ``service`` (database, schema, broker), logged and counted as there."""
        log.error("%s unavailable during POST %s: %s", service, ROUTE, str(error).strip() or type(error).__name__)
        observability.metrics.record_refusal(ServiceUnavailable.code, service)
        return ServiceUnavailable.code, errors.error_body(ServiceUnavailable.code, message), {}


def wait_seconds(query_string: bytes) -> float | None:
    """``?wait`` as the Flask route reads it (default 0); None for any other parameter or a bad value, which the route answers."""
    fields = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if any(name != "wait" for name, _ in fields) or len(fields) > 1:
        return None
    raw = fields[0][1] if fields else ""
    return 0.0 if raw == "" else parse_number(raw, 0.0, api.MAX_WAIT_SECONDS, float)


class ClientGone(Exception):
    """The client closed its connection before its upload arrived whole: nothing is stored, nobody is answered."""


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def is_secure(scope: Scope, trusted_hops: int) -> bool:
    """HTTPS as the client sees it: the scheme, or behind ``trusted_hops`` proxies their X-Forwarded-Proto."""
    forwarded = forwarded_value(scope, b"x-forwarded-proto", trusted_hops)
    return forwarded == "https" if forwarded else scope.get("scheme") == "https"


def client_address(scope: Scope, trusted_hops: int) -> str:
    """The client's address as the Flask route sees it (``request.remote_addr`` behind ProxyFix)."""
    client = scope.get("client")
    return forwarded_value(scope, b"x-forwarded-for", trusted_hops) or (client[0] if client else "unknown")


def forwarded_value(scope: Scope, header: bytes, trusted_hops: int) -> str | None:
    """What the last ``trusted_hops`` proxies said in ``header``, read as werkzeug's ProxyFix reads it; None without them."""
    if not trusted_hops:
        return None
    values = [value.strip() for value in dict(scope["headers"]).get(header, b"").decode("latin-1").split(",")]
    return values[-trusted_hops] or None if len(values) >= trusted_hops else None


def delete_upload(database_url: str, job_id: int, image_id: int) -> None:
    """``shared.jobs.store.delete_upload_job`` on a connection of its own: the rare undo of an upload Redis refused."""
    conn = sync_connection.connect(database_url)
    try:
        jobs.store.delete_upload_job(conn, job_id, image_id)
    finally:
        conn.close()
