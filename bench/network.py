"""Bulk throughput and upload latency across a network: worker and web hosts a round trip from the data host.

    python -m bench --sections network [--network-images 30000] [--workers 1,2,4]

The data host (PostgreSQL, Redis), one worker host with WORKER_CONCURRENCY bulk processes and a web
host, on tests/support/netns.py's private network. At 0 ms the hosts talk across the bridge as they
are; at 2 and 20 ms the round trip is added by ``nethosts.round_trip``: netem on the data host's link
where the kernel has it, else a delay relay on the data host (tests/support/delay_relay.py), whose own
CPU each row reports since it shares the cores with what it measures. Each row is the median of REPEATS
jobs over the same images on one worker host, each on queues of its own. At each round trip, after the
jobs, UPLOADS uploads one after another through the web (``POST /api/predictions?wait=10``) give the
upload latency. Writes bench/results/network.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import common, latency
from producer.ingest import load_mnist
from shared import jobs, queues
from shared.config import DEFAULT_MNIST_DIR, Settings, load_settings
from shared.db import connection
from shared.images.codec import png_bytes
from stack.processes import ChildProcess
from tests.support import nethosts, netns

RTTS_MS = (0, 2, 20)
BATCH_SIZE = 1024  # the default BATCH_SIZE
HOSTS = ("data", "worker1", "web")
UPLOADS = 40
REPEATS = 3  # jobs per row: a job of the default 30,000 images lasts about a second at 0 ms


def run(image_count: int, worker_counts: tuple[int, ...]) -> dict[str, Any]:
    logs = common.RESULTS_DIR / "network-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    uploads: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(netns.Network(HOSTS))
        postgres, redis = nethosts.start_data_host(stack, net, logs)
        image_ids, version = nethosts.store_test_images(postgres.url, image_count)
        digit_images, _ = load_mnist(DEFAULT_MNIST_DIR, "test", UPLOADS)
        pictures = [png_bytes(image) for image in digit_images]
        base = {**os.environ, "QUEUE_PREFIX": "mnqnet-bench", "WORKER_METRICS_PORT": "0", "UPLOAD_RATE_LIMIT": "off"}
        direct = load_settings({**base, "DATABASE_URL": postgres.url, "REDIS_URL": redis.url})  # this process's
        for rtt in RTTS_MS:
            with nethosts.round_trip(net, postgres, redis, rtt, logs) as path:
                env = {**base, "DATABASE_URL": path.database_url, "REDIS_URL": path.redis_url}
                for workers in worker_counts:
                    log_path = logs / f"worker-{rtt}-{workers}.log"
                    row = one_job(net, env, direct, path.relay, image_ids, version, workers, log_path)
                    rows.append({"rtt_ms": rtt, "workers": workers, "delay": path.how, **row})
                uploads.append({"rtt_ms": rtt, "delay": path.how, **upload_latency(net, env, pictures, logs, rtt)})
    for row in rows:
        loopback = next(r for r in rows if r["rtt_ms"] == 0 and r["workers"] == row["workers"])["images_per_second"]
        row["ratio_to_loopback"] = round(row["images_per_second"] / loopback, 3)
    report = {"images": len(image_ids), "batch_size": BATCH_SIZE, "rows": rows, "uploads": uploads}
    (common.RESULTS_DIR / "network.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def one_job(net: netns.Network, env: dict[str, str], settings: Settings, relay: ChildProcess | None,
            image_ids: list[int], version: str, workers: int, log_path: Path) -> dict[str, Any]:  # fmt: skip
    """A worker host of ``workers`` bulk processes, reaching the data host by ``env``'s URLs, runs one job over
    every image to warm up, then REPEATS more, each sent and waited for by ``settings`` (directly): images/s from
    submit to done (the median, and the spread), and the relay's CPU meanwhile (seconds, and cores: seconds per
    second)."""
    # Queues of its own: a batch the last worker held when it was stopped must not run during this job.
    env = {**env, "QUEUE_PREFIX": f"{env['QUEUE_PREFIX']}-{log_path.stem}", "WORKER_CONCURRENCY": str(workers)}
    settings = settings.model_copy(update={"queue_prefix": env["QUEUE_PREFIX"]})
    worker = nethosts.start_worker(net, "worker1", env, log_path)
    relay_pids = [relay.pid] if relay else []
    durations = []
    try:
        with contextlib.closing(connection.connect(settings.database_url)) as conn:
            relay_cpu = 0.0
            app = queues.broker.celery_app(settings)
            selection = jobs.service.Selection(image_ids=tuple(image_ids))
            for repeat in range(1 + REPEATS):  # the first warms the worker's processes and connections: not counted
                if repeat == 1:
                    relay_cpu = common.cpu_seconds(relay_pids)
                started = time.monotonic()
                job_id = jobs.service.submit_job(conn, app, settings, selection, version, BATCH_SIZE).id
                common.wait_for_results(conn, job_id, len(image_ids))
                durations.append(time.monotonic() - started)
            relay_cpu = common.cpu_seconds(relay_pids) - relay_cpu
            durations = durations[1:]
    finally:
        worker.stop()
    rate, spread = common.median_and_spread([len(image_ids) / seconds for seconds in durations])
    return {
        "images_per_second": round(rate, 1),
        "spread": round(spread, 1),
        "seconds": [round(seconds, 2) for seconds in durations],
        "relay_cpu_seconds": round(relay_cpu, 2),
        "relay_cores": round(relay_cpu / sum(durations), 3),
    }


def upload_latency(
    net: netns.Network, env: dict[str, str], pictures: list[bytes], logs: Path, rtt: int
) -> dict[str, Any]:
    """UPLOADS uploads one after another, each waiting for its prediction, through a web host and a worker host
    that reach the data host by ``env``'s URLs: milliseconds p50 and p99."""
    env = {**env, "QUEUE_PREFIX": f"{env['QUEUE_PREFIX']}-uploads-{rtt}", "WORKER_CONCURRENCY": "1"}
    worker = nethosts.start_worker(net, "worker1", env, logs / f"uploads-worker-{rtt}.log")
    try:
        web, url = nethosts.start_web(net, "web", env, logs / f"web-{rtt}.log")
        try:
            latency.upload_latencies_ms(url, pictures[:2])  # warm: the web's first connections and the listener
            latencies = latency.upload_latencies_ms(url, pictures)
        finally:
            web.stop()
    finally:
        worker.stop()
    return {
        "uploads": len(latencies),
        "p50_ms": round(common.percentile(latencies, 0.5), 1),
        "p99_ms": round(common.percentile(latencies, 0.99), 1),
    }


def table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{report['images']:,} MNIST images per job, batches of {report['batch_size']}; median of {REPEATS}",
        "",
    ]
    lines.append(
        f"{'RTT ms':>7}{'workers':>9}{'images/s':>11}{'spread':>9}{'x 0 ms':>8}  {'delay':<6}{'relay cores':>12}"
    )
    for row in report["rows"]:
        relay = f"{row['relay_cores']:.3f}" if row["delay"] == "relay" else "-"
        lines.append(f"{row['rtt_ms']:>7}{row['workers']:>9}{row['images_per_second']:>11,.0f}{row['spread']:>9,.0f}"
                     f"{row['ratio_to_loopback']:>8.3f}  {row['delay']:<6}{relay:>12}")  # fmt: skip
    lines += ["", f"{'RTT ms':>7}  {'delay':<6}{'uploads':>8}{'p50 ms':>9}{'p99 ms':>9}"]
    for row in report["uploads"]:
        lines.append(
            f"{row['rtt_ms']:>7}  {row['delay']:<6}{row['uploads']:>8}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
        )
    return lines
