"""``GET /metrics``: the web's metrics in Prometheus' text format, for every web process at once.

Served from the folder of per-process files that the server prepared before its processes
started (``web/serve.py``, PROMETHEUS_MULTIPROC_DIR), so whichever process answers the scrape
answers for all; plus the queues' depth and age, read from Redis now (``shared/observability/queues.py``).

No sign-in and no rate limit: a scraper has neither a session nor an operator's token. Inside a
cluster or a compose network this is usual: Prometheus reaches the pods directly and an ingress
routes only the app's paths. Where the web's own port is public, METRICS_TOKEN makes the route
ask for ``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: ...}``). The
metrics hold counts and timings, no image, token or job id.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from shared import observability
from shared.config import Settings
from shared.observability.queues import QueueCollector

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics() -> Response:
    config: Settings = current_app.config["MNIST_SETTINGS"]
    if config.metrics_token and not bearer_matches(request.headers.get("Authorization", ""), config.metrics_token):
        return Response(
            "send Authorization: Bearer <METRICS_TOKEN>\n",
            401,
            {"WWW-Authenticate": "Bearer"},
            content_type="text/plain",
        )
    registry = observability.files.scrape_registry(config.metrics_store_dir, [QueueCollector(config)])
    body, content_type = observability.files.exposition_text(registry, request.headers.get("Accept"))
    return Response(body, content_type=content_type)


def bearer_matches(header: str, token: str) -> bool:
    scheme, _, sent = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())
