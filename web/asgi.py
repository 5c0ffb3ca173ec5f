"""What the web's server runs: the upload lane on the event loop, every other request in Flask.

    python -m web.serve        # granian's ASGI worker, WEB_CONCURRENCY processes (web/serve.py)

Each process runs one event loop. A plain ``POST /api/predictions`` (web/upload_lane.py) is
answered on it, so a burst of waiting uploads holds no thread; every other request (the pages,
the rest of the API, the metrics, and any upload the lane passes on) runs the Flask app on one
of WEB_THREADS threads through a2wsgi's WSGI-to-ASGI bridge, as it ran under the WSGI server;
its waiting requests are woken by the lane's listener, the process's one LISTEN connection.
The Flask app alone (``web.app:create_app``) still serves the tests' client and ``flask run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from a2wsgi import WSGIMiddleware

from shared.config import Settings, load_settings
from web import app, backends
from web.upload_lane import Receive, Scope, Send, UploadLane

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The served app of one process, from ``settings`` (default: read now, in the process that serves)."""
    config = settings or load_settings()
    pages = app.create_app(settings=config)
    flask_routes = WSGIMiddleware(pages, workers=config.web_threads)  # type: ignore[arg-type]
    lane = UploadLane(config, pages)
    pages.extensions[backends.LISTENER_EXTENSION] = lane.listener  # the Flask threads wait on it too

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if lane.listener.loop is None:  # the first request: the threads may now ask the loop to listen
            lane.listener.loop = asyncio.get_running_loop()
        if lane.accepts(scope):
            await lane.handle(scope, receive, send)
        else:
            await flask_routes(scope, coroutine(receive), send)

    return application


def coroutine(receive: Receive) -> Receive:
    """granian's ``receive`` returns an awaitable that is not a coroutine, which a2wsgi's thread hand-over requires."""

    async def received() -> dict[str, Any]:
        return await receive()

    return received
