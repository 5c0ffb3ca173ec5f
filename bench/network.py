"""Bulk throughput across a network: worker host and data host in network namespaces, at 0, 2 and 20 ms RTT.

    python -m bench --sections network [--network-images 10000] [--workers 1,2,4]

The data host (PostgreSQL, Redis) and one worker host with WORKER_CONCURRENCY bulk processes, on
tests/support/netns.py's private network; the round trip is added with netem on the data host's
link, half each way. A kernel without sch_netem cannot add delay: those rows say so, with no figure.
Writes bench/results/network.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import common
from shared import jobs, queues
from shared.config import load_settings
from shared.db import connection
from tests.support import nethosts, netns

RTTS_MS = (0, 2, 20)
BATCH_SIZE = 1024  # the default BATCH_SIZE
HOSTS = ("data", "worker1")


def run(image_count: int, worker_counts: tuple[int, ...]) -> list[dict[str, Any]]:
    logs = common.RESULTS_DIR / "network-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(netns.Network(HOSTS))
        postgres, redis = nethosts.start_data_host(stack, net, logs)
        image_ids, version = nethosts.store_test_images(postgres.url, image_count)
        env = {**os.environ, "DATABASE_URL": postgres.url, "REDIS_URL": redis.url, "QUEUE_PREFIX": "mnqnet-bench",
               "WORKER_METRICS_PORT": "0"}  # fmt: skip
        for rtt in RTTS_MS:
            try:
                net.shape("data", delay_ms=rtt / 2)
            except netns.NetworkUnavailable as error:
                rows += [{"rtt_ms": rtt, "workers": n, "images_per_second": None, "ratio_to_loopback": None,
                          "note": str(error)} for n in worker_counts]  # fmt: skip
                continue
            for workers in worker_counts:
                rows.append({"rtt_ms": rtt, "workers": workers, **one_job(net, env, image_ids, version, workers, logs)})
        net.shape("data")
    for row in rows:
        loopback = next(r for r in rows if r["rtt_ms"] == 0 and r["workers"] == row["workers"])["images_per_second"]
        if row["images_per_second"] and loopback:
            row["ratio_to_loopback"] = round(row["images_per_second"] / loopback, 3)
    (common.RESULTS_DIR / "network.json").write_text(
        json.dumps({"images": len(image_ids), "rows": rows}, indent=2) + "\n"
    )
    return rows


def one_job(net: netns.Network, env: dict[str, str], image_ids: list[int], version: str, workers: int,
            logs: Path) -> dict[str, Any]:  # fmt: skip
    """A worker host of ``workers`` bulk processes runs one job over every image: images/s from submit to done."""
    worker = nethosts.start_worker(
        net, "worker1", {**env, "WORKER_CONCURRENCY": str(workers)}, logs / f"worker-{workers}.log"
    )
    try:
        settings = load_settings(env)
        with contextlib.closing(connection.connect(settings.database_url)) as conn:
            started = time.monotonic()
            selection = jobs.service.Selection(image_ids=tuple(image_ids))
            app = queues.broker.celery_app(settings)
            job_id = jobs.service.submit_job(conn, app, settings, selection, version, BATCH_SIZE).id
            common.wait_for_results(conn, job_id, len(image_ids))
            seconds = time.monotonic() - started
    finally:
        worker.stop()
    return {
        "images_per_second": round(len(image_ids) / seconds, 1),
        "seconds": round(seconds, 2),
        "ratio_to_loopback": None,
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'RTT ms':>7}{'workers':>9}{'images/s':>11}{'x 0 ms':>8}  note"]
    for row in rows:
        rate = f"{row['images_per_second']:,.0f}" if row["images_per_second"] else "-"
        ratio = f"{row['ratio_to_loopback']:.3f}" if row["ratio_to_loopback"] else "-"
        lines.append(f"{row['rtt_ms']:>7}{row['workers']:>9}{rate:>11}{ratio:>8}  {row.get('note', '')}")
    return lines
