"""Single uploads: latency from request to stored prediction, idle and under a bulk job; memory.

Each upload is ``POST /api/predictions?wait=10`` with a 28x28 PNG, one after another,
against the real web (web/serve.py) and a real worker; the clock runs from sending the request to
reading a response that carries the prediction.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bench.common import (
    UPLOAD_CONSUMER_READY,
    WORKER_READY,
    child_pids,
    peak_rss_mb,
    percentile,
    start_web,
    start_worker,
)
from shared import jobs, queues
from shared.config import Settings
from shared.db import connection
from shared.images.codec import png_bytes
from shared.models.files import model_version
from stack.processes import ChildProcess

UPLOADS = 500
MIN_QUEUED_BULK_BATCHES = 4
WAIT_SECONDS = 10


def upload_latencies_ms(web_url: str, pictures: list[bytes]) -> list[float]:
    address = urlparse(web_url)
    latencies = []
    for picture in pictures:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        started = time.perf_counter()
        connection.request(
            "POST", f"/api/predictions?wait={WAIT_SECONDS}", body=picture, headers={"Content-Type": "image/png"}
        )
        response = connection.getresponse()
        body = json.loads(response.read())
        latencies.append((time.perf_counter() - started) * 1000)
        connection.close()
        if response.status != 200 or body.get("status") != "done":
            raise RuntimeError(f"upload answered {response.status}: {body}")
    return latencies


def summary(what: str, latencies: list[float]) -> dict[str, Any]:
    return {
        "what": what,
        "uploads": len(latencies),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
    }


def memory(worker: ChildProcess, web: ChildProcess) -> list[dict[str, Any]]:
    """Peak RSS of each worker process (supervisor, celery parents, pools) and each web process (master, workers)."""
    rows = []
    for name, parent in (("worker", worker.pid), ("web", web.pid)):
        pids = [parent, *child_pids(parent)]
        pids += [grandchild for pid in pids[1:] for grandchild in child_pids(pid)]
        rows.append({"what": f"peak RSS, {name} processes", "rss_mb": [round(peak_rss_mb(pid), 1) for pid in pids]})
    return rows


class BulkLoad:
    """Keeps the bulk queue busy with 10k-image jobs for as long as the block runs."""

    def __init__(self, settings: Settings, image_ids: list[int]) -> None:
        self.settings = settings
        self.selection = jobs.service.Selection(image_ids=tuple(image_ids))
        self.model_version = model_version(settings.model_path)
        self.conn = connection.connect(settings.database_url)
        self.app = queues.broker.celery_app(settings)
        self.jobs: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.keep_busy, daemon=True)
        self.predicted = 0

    def keep_busy(self) -> None:
        queue = queues.broker.bulk_queue(self.settings)
        while not self.stop.is_set():
            if queues.broker.queued_messages(self.app, queue) < MIN_QUEUED_BULK_BATCHES:
                self.jobs.append(
                    jobs.service.submit_job(self.conn, self.app, self.settings, self.selection, self.model_version).id
                )
            self.stop.wait(0.05)

    def __enter__(self) -> BulkLoad:
        self.thread.start()
        time.sleep(0.5)  # the workers are busy with bulk batches before the first upload
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.predicted = sum(jobs.store.get_job(self.conn, job_id)["done_count"] for job_id in self.jobs)
        self.conn.close()


def run(
    env: dict[str, str], settings: Settings, image_ids: list[int], images: np.ndarray, log_dir: Path
) -> list[dict[str, Any]]:
    pictures = [png_bytes(image) for image in images[:UPLOADS]]
    # The production entry point: a bulk worker and a dedicated upload consumer.
    ready = (WORKER_READY, UPLOAD_CONSUMER_READY)
    worker = start_worker(
        env, log_dir / "latency-worker.log", settings.worker_processes(), module="worker", ready=ready
    )
    try:
        web, web_url = start_web(env, log_dir / "latency-web.log")
        try:
            upload_latencies_ms(web_url, pictures[:20])  # warm up both web processes and their pools
            rows = [summary("single uploads, idle", upload_latencies_ms(web_url, pictures))]

            with BulkLoad(settings, image_ids) as load:
                under_load = upload_latencies_ms(web_url, pictures)
            rows.append(
                summary(
                    f"single uploads, during bulk jobs ({load.predicted:,} bulk images predicted meanwhile)", under_load
                )
            )
            rows += memory(worker, web)
        finally:
            web.stop()
    finally:
        worker.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'what':<66}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for row in rows:
        if "p50_ms" in row:
            lines.append(f"{row['what']:<66}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}{row['p99_ms']:>10.1f}")
        else:
            lines.append(f"{row['what']:<66}{'  '.join(f'{mb:.0f} MB' for mb in row['rss_mb']):>30}")
    return lines
