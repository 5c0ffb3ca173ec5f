"""The worker's ``/metrics``: one exporter per ``python -m worker`` (so per container or pod).

It runs in a thread of the ``python -m worker`` parent, which predicts nothing and outlives its
children, on WORKER_METRICS_HOST:WORKER_METRICS_PORT (0.0.0.0:9808 by default, celery-exporter's
port; 0 turns it off). A scrape adds up the files every process below it writes into this
start's metrics folder (the bulk Celery worker, its pool processes, the upload consumer: see
``shared/observability/files.py``) and reads the queues from Redis (``shared/observability/queues.py``).
Open, with no token: it has no published port in compose or Kubernetes, only the network's
scraper reaches it.

A port that is taken (two workers on one machine) is logged and the worker runs on without an
exporter: metrics are never a reason to stop predicting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from shared import observability
from shared.config import Settings
from shared.observability.queues import QueueCollector

log = logging.getLogger(__name__)


def start(settings: Settings, directory: Path) -> WSGIServer | None:
    """Serve the metrics of ``directory``'s processes in a daemon thread; None when off or the port is taken."""
    if not settings.worker_metrics_port:
        return None
    registry = observability.files.scrape_registry(directory, [QueueCollector(settings)])
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as error:
        log.error(
            "worker metrics not served on %s:%s (%s); set WORKER_METRICS_PORT to a free port, or 0", host, port, error
        )
        return None
    log.info("worker metrics on http://%s:%s/metrics", host, server.server_port)
    return server
