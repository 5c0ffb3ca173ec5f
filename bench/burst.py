"""Upload bursts: open-loop load at fixed rates, with the bulk lane idle and busy.

    python -m bench --sections burst [--rates 100,300,1000,2000] [--web serve|serve:THREADS|sync|gthread:8]
        [--connections keep-alive|close] [--label after]

Against a real ``python -m web.serve`` (granian's WSGI threads; gunicorn for trees from before it)
and ``python -m worker`` (bulk worker and upload consumer) on a private database, a separate process
(``bench.burst_client``) sends ``POST
/api/predictions?wait=10`` at each rate for a few seconds, loopback only, bounded in count
and time. Per rate: accepted (answered with the stored prediction), refused (429), other
failures, and p50/p95/p99 from the scheduled send to the answer. The highest rate with
p99 <= 100 ms and nothing refused is reported, idle and while bulk jobs keep the workers busy.

The client keeps its connections open between uploads by default (``--connections keep-alive``),
as any HTTP client library sending hundreds a second does; ``close`` opens one per upload. On
two cores the client's own CPU competes with the server's: opening a connection per upload cost
it about 0.43 ms of CPU per upload, keeping them 0.29 ms (at 700/s; the server's was the same).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    GUNICORN_APP,
    RESULTS_DIR,
    UPLOAD_CONSUMER_READY,
    WEB_READY_SECONDS,
    WORKER_OPTIONS,
    WORKER_READY,
    WORKER_READY_SECONDS,
    child_pids,
    cpu_seconds,
    gunicorn_command,
    percentile,
    pids_named,
    private_environment,
)
from bench.latency import BulkLoad, upload_latencies_ms
from producer.ingest import load_mnist, mnist_rows
from shared import images, queues
from shared.config import PROJECT_ROOT
from shared.db import connection
from shared.images.codec import png_bytes
from stack.processes import LOOPBACK, ChildProcess, free_port, http_ok, log_contains
from web import serve

SECONDS_PER_RATE = 4.0
SINGLE_UPLOADS = 300
P99_TARGET_MS = 100.0
DRAIN_SECONDS = 60
WEB_ENV = {"PUBLIC_INSIGHTS": "1", "UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off"}


def process_groups(worker: Any, web: Any) -> dict[str, list[int]]:
    """The pids whose CPU a burst is charged: web processes, the upload consumer, the bulk worker, PostgreSQL, Redis."""
    worker_children = child_pids(worker.pid)
    uploads = [pid for pid in worker_children if b"worker.uploads" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    bulk = [pid for pid in worker_children if pid not in uploads]
    bulk += [grandchild for pid in bulk for grandchild in child_pids(pid)]
    return {
        "web": [web.pid, *child_pids(web.pid)],
        "upload consumer": uploads,
        "bulk worker": bulk,
        "postgres": pids_named("postgres"),
        "redis": pids_named("redis-server"),
    }


def refreshed(groups: dict[str, list[int]]) -> dict[str, list[int]]:
    return {**groups, "postgres": pids_named("postgres"), "redis": pids_named("redis-server")}


def burst(url: str, rate: int, pictures_file: Path, groups: dict[str, list[int]], connections: str) -> dict[str, Any]:
    cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    load_before = Path("/proc/loadavg").read_text().split()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.burst_client",
            url,
            str(rate),
            str(SECONDS_PER_RATE),
            str(pictures_file),
            connections,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise RuntimeError(f"burst client failed: {done.stderr[-2000:]}")
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        kept = RESULTS_DIR / "burst-client-unreadable.txt"
        kept.write_text(done.stdout)
        raise RuntimeError(
            f"the burst client's answer at {rate}/s is not JSON ({len(done.stdout)} characters, kept in {kept})"
        ) from None
    outcomes = answer["outcomes"]
    answered = [ms for status, ms, state in outcomes if status == 200 and state == "done"]
    # Answered per second of the whole burst: from the first send to the last answer.
    finished = [
        index / rate + ms / 1000
        for index, (status, ms, state) in enumerate(outcomes)
        if status == 200 and state == "done"
    ]
    # CPU of the processes there now (PostgreSQL starts backends for new connections during a burst).
    now = {name: cpu_seconds(pids_now) for name, pids_now in refreshed(groups).items()}
    cpu_ms = {name: (now[name] - cpu_before[name]) * 1000 / max(1, len(answered)) for name in groups}
    refused = sum(1 for status, *_ in outcomes if status == 429)
    return {
        "rate": rate,
        "sent": len(outcomes),
        "connections_opened": answer["connections_opened"],
        "accepted": len(answered),
        "refused": refused,
        "failed": len(outcomes) - len(answered) - refused,
        "failures": sorted(
            {f"{status} {state}" for status, _, state in outcomes if status not in (200, 429) or state != "done"}
        )[:5],
        "achieved_per_s": len(answered) / max(finished) if finished else 0.0,
        "p50_ms": percentile(answered, 0.5) if answered else None,
        "p95_ms": percentile(answered, 0.95) if answered else None,
        "p99_ms": percentile(answered, 0.99) if answered else None,
        "wall_s": time.perf_counter() - started,
        "cpu_ms_per_answer": {name: round(ms, 2) for name, ms in cpu_ms.items()},
        "load_average_before": float(load_before),
    }


def sustained(rows: list[dict[str, Any]]) -> int | None:
    """The highest rate answered in full, nothing refused or failed, with p99 within the target."""
    good = [
        row["rate"]
        for row in rows
        if row["accepted"] == row["sent"] and row["p99_ms"] is not None and row["p99_ms"] <= P99_TARGET_MS
    ]
    return max(good) if good else None


def drain(settings: Any, url: str) -> None:
    """Until the upload queue is empty and the web answers at once again (a saturated server still
    works through the connections its listen backlog holds, long after their clients gave up)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while queues.uploads.waiting(settings) and time.monotonic() < deadline:
        time.sleep(0.2)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        if http_ok(f"{url}/healthz")() and time.perf_counter() - started < 0.05:
            break
        time.sleep(0.5)
    time.sleep(1.0)


def start_side(env: dict[str, str], tree: Path, web: str, settings: Any) -> tuple[ChildProcess, ChildProcess, str]:
    """``python -m worker`` and the web running the code of ``tree`` (this one, or another worktree's)."""
    worker_log, web_log = RESULTS_DIR / f"burst-worker-{tree.name}.log", RESULTS_DIR / f"burst-web-{tree.name}.log"
    worker_log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "worker", "--concurrency", str(settings.worker_processes()), *WORKER_OPTIONS]
    worker = ChildProcess("worker", command, env, worker_log, cwd=tree)
    markers = [log_contains(worker_log, marker) for marker in (WORKER_READY, UPLOAD_CONSUMER_READY)]
    try:
        worker.wait_until(lambda: all(marker() for marker in markers), WORKER_READY_SECONDS)
        url = f"http://{LOOPBACK}:{free_port()}"
        web_log.unlink(missing_ok=True)
        server = ChildProcess("web", web_command(url, web, tree), env, web_log, cwd=tree)
        try:
            server.wait_until(http_ok(f"{url}/healthz"), WEB_READY_SECONDS)
        except BaseException:
            server.stop()
            raise
    except BaseException:
        worker.stop()
        raise
    return worker, server, url


def web_command(url: str, web: str, tree: Path) -> list[str]:
    """The web of ``--web``, 2 processes, no access log: ``serve[:THREADS]``, the tree's ``python -m web.serve``
    (what users run; THREADS per process, default WEB_THREADS); or gunicorn, ``sync`` or ``gthread:THREADS``,
    for trees from before web/serve.py (with the tree's web/gunicorn_config.py when it has one)."""
    name, _, threads = web.partition(":")
    if name == "serve":
        if not (tree / "web" / "serve.py").is_file():
            raise ValueError(f"{tree} has no web/serve.py: use --web sync or gthread:THREADS for it")
        return serve.command(
            url.removeprefix("http://"), 2, int(threads) if threads else None, backlog=4096, access_log=False
        )
    command = [*gunicorn_command(url, 2, config=(tree / "web" / "gunicorn_config.py").is_file()), "--backlog", "4096"]
    if name == "gthread":
        command += ["--worker-class", "gthread", "--threads", threads or "8"]
    elif name == "sync":
        command += ["--worker-class", "sync", "--threads", "1"]  # more than one thread would make gunicorn run gthread
    else:
        raise ValueError(f"--web {web!r}: expected serve[:THREADS], sync or gthread:THREADS")
    return [*command, GUNICORN_APP]


def run_side(
    env: dict[str, str],
    settings: Any,
    tree: Path,
    web: str,
    rates: tuple[int, ...],
    image_ids: list[int],
    pictures: list[bytes],
    pictures_file: Path,
    connections: str,
) -> dict[str, Any]:
    worker, server, url = start_side(env, tree, web, settings)
    report: dict[str, Any] = {"tree": str(tree), "web": web, "connections": connections}
    try:
        upload_latencies_ms(url, pictures[:30])  # warm every web process, the pool and the consumer
        single = upload_latencies_ms(url, pictures)
        report["single_upload_ms"] = {f"p{q}": percentile(single, q / 100) for q in (50, 95, 99)}
        for bulk in (False, True):
            rows = []
            with BulkLoad(settings, image_ids) if bulk else contextlib.nullcontext():
                for rate in rates:
                    rows.append(burst(url, rate, pictures_file, process_groups(worker, server), connections))
                    print(f"burst {tree.name} {web} bulk={bulk}: {rows[-1]}", file=sys.stderr, flush=True)
                    drain(settings, url)
            report["with_bulk" if bulk else "idle"] = rows
    finally:
        server.stop()
        worker.stop()
    report["sustained_idle"] = sustained(report["idle"])
    report["sustained_with_bulk"] = sustained(report["with_bulk"])
    return report


def run(
    rates: tuple[int, ...], web: str, against: Path | None, against_web: str, connections: str
) -> list[dict[str, Any]]:
    """Each side in turn on one private database and queue prefix: ``against`` (another worktree) first."""
    with private_environment() as (base_env, settings), tempfile.TemporaryDirectory(prefix="mnistq-burst-") as scratch:
        env = {**base_env, **WEB_ENV}
        digit_images, labels = load_mnist(settings.mnist_dir, "test", None)
        conn = connection.connect(settings.database_url)
        image_ids = images.store.insert_images(conn, list(mnist_rows(digit_images, labels, "test")))
        conn.close()
        pictures = [png_bytes(image) for image in digit_images[:SINGLE_UPLOADS]]
        pictures_file = Path(scratch) / "pictures.npz"
        np.savez(pictures_file, **{f"p{k:04d}": np.frombuffer(p, dtype=np.uint8) for k, p in enumerate(pictures)})
        sides = ([(against, against_web)] if against else []) + [(PROJECT_ROOT, web)]
        return [
            run_side(env, settings, tree, side_web, rates, image_ids, pictures, pictures_file, connections)
            for tree, side_web in sides
        ]


def table(report: dict[str, Any]) -> list[str]:
    single = report["single_upload_ms"]
    lines = [
        f"burst ({Path(report['tree']).name}, web {report['web']}, client connections {report['connections']}):"
        f" single uploads one after another, p50 {single['p50']:.1f} ms,"
        f" p95 {single['p95']:.1f} ms, p99 {single['p99']:.1f} ms",
        f"{'bulk lane':<10}{'rate/s':>8}{'sent':>7}{'answered':>10}{'429':>6}{'failed':>8}{'answered/s':>12}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}",
    ]
    for key, name in (("idle", "idle"), ("with_bulk", "busy")):
        for row in report[key]:
            cells = [f"{row[p]:>9.1f}" if row[p] is not None else f"{'-':>9}" for p in ("p50_ms", "p95_ms", "p99_ms")]
            lines.append(
                f"{name:<10}{row['rate']:>8}{row['sent']:>7}{row['accepted']:>10}{row['refused']:>6}{row['failed']:>8}"
                f"{row['achieved_per_s']:>12.0f}{''.join(cells)}"
            )
    lines.append(
        f"highest rate with p99 <= {P99_TARGET_MS:g} ms and nothing refused: idle {report['sustained_idle']}/s,"
        f" with bulk jobs {report['sustained_with_bulk']}/s"
    )
    return lines


def main(
    rates: tuple[int, ...],
    label: str,
    web: str = "serve",
    against: Path | None = None,
    against_web: str = "sync",
    connections: str = "keep-alive",
) -> list[str]:
    reports = run(rates, web, against, against_web, connections)
    lines = [line for report in reports for line in [*table(report), ""]]
    if len(reports) == 2:
        before, after = reports
        lines.append(
            f"sustained, {Path(before['tree']).name} -> this tree:"
            f" idle {before['sustained_idle']} -> {after['sustained_idle']}/s,"
            f" with bulk jobs {before['sustained_with_bulk']} -> {after['sustained_with_bulk']}/s"
        )
    name = f"burst{('-' + label) if label else ''}"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return lines
