"""The web's memory under worst-case uploads: many at once of a big, nearly empty picture in each accepted format.

    python -m bench --sections upload-memory [--against /tmp/before]

A picture of a few kilobytes on the wire can decode to hundreds of megabytes. For each format, a
fresh ``python -m web.serve`` (2 processes, as the pod runs it) of the tree is warmed with small
uploads, then sent UPLOADS concurrent ``POST /api/predictions`` of a 4000x4000 picture of a thin
ring; the resident memory of all its processes is sampled every SAMPLE_SECONDS. Per format: RSS at
rest before, the peak of the sum and of any one process, and RSS REST_SECONDS after the last answer.
``--against`` runs another worktree's web first, on a database made with that tree's own schema.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

from bench.common import RESULTS_DIR, WEB_READY_SECONDS, child_pids
from shared.config import PROJECT_ROOT, environment
from stack import scratch
from stack.processes import LOOPBACK, ChildProcess, free_port, http_ok
from web import serve

SIDE = 4000  # 16 million pixels: the default MAX_IMAGE_PIXELS
UPLOADS = 16
WEB_PROCESSES = 2
SAMPLE_SECONDS = 0.02
REST_SECONDS = 2.0
SETTLE_SECONDS = 1.0
WARM_UPLOADS = 8
REQUEST_TIMEOUT = 120.0
# (name, Pillow format, mode, save options): what each accepted format costs most to decode.
PICTURES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("RGBA PNG", "PNG", "RGBA", {}),
    ("lossless RGBA WebP", "WEBP", "RGBA", {"lossless": True}),
    ("JPEG", "JPEG", "L", {"quality": 80}),
    ("GIF", "GIF", "L", {}),
    ("BMP", "BMP", "1", {}),  # one bit a pixel: 8 bits would be beyond MAX_UPLOAD_BYTES
)
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
WEB_ENV = {"UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off", "MAX_QUEUED_UPLOADS": "100000"}


def worst_case_picture(image_format: str, mode: str, side: int = SIDE, **options: Any) -> bytes:
    """A big, nearly empty picture of a 0 (on transparent paper in RGBA): kilobytes on the wire, megabytes decoded."""
    paper = (0, 0, 0, 0) if mode == "RGBA" else 1 if mode == "1" else 255
    ink = (0, 0, 0, 255) if mode == "RGBA" else 0
    picture = Image.new(mode, (side, side), paper)
    ImageDraw.Draw(picture).ellipse((side // 4, side // 5, side * 3 // 4, side * 4 // 5), outline=ink, width=side // 16)
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory now (statm's second field, in pages); 0 for a process that is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            pending += child_pids(current)
    return found


class RssSampler:
    """Samples the resident memory of a process tree every SAMPLE_SECONDS on a thread, keeping the peaks."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_total = 0.0
        self.peak_process = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> float:
        return sum(rss_mb(pid) for pid in tree_pids(self.root))

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = [rss_mb(pid) for pid in tree_pids(self.root)]
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_process = max(self.peak_process, *sizes)
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def upload(url: str, data: bytes, client: int = 1) -> int:
    """``POST /api/predictions`` with the picture as the body (no wait), from loopback address 127.0.0.``client``:
    the answer's status (0 when the connection failed)."""
    parts = urlsplit(url)
    source = (f"127.0.0.{client}", 0)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT, source_address=source)
    try:
        connection.request("POST", "/api/predictions", body=data, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def at_once(url: str, data: bytes, count: int) -> list[int]:
    """``count`` uploads of ``data``, released together, as from ``count`` clients (each its own loopback address:
    the web lets one client send only a few bodies at once)."""
    start = threading.Barrier(count)

    def send(client: int) -> int:
        start.wait()
        return upload(url, data, client)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, range(2, count + 2)))


@contextlib.contextmanager
def tree_database(tree: Path, env: dict[str, str]) -> Iterator[str]:
    """A private database with ``tree``'s own schema and bundled model (its ``producer init-db``), dropped after."""
    name = scratch.unique_name("mnistq_bench_memory")
    url = scratch.create_database(name)
    try:
        subprocess.run(
            [sys.executable, "-m", "producer", "init-db"],
            cwd=tree, env={**env, "DATABASE_URL": url, "SCHEMA_DATABASE_URL": url},
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        yield url
    finally:
        scratch.drop_database(name)


@contextlib.contextmanager
def web(tree: Path, env: dict[str, str], log_path: Path) -> Iterator[tuple[ChildProcess, str]]:
    """``tree``'s ``python -m web.serve`` with WEB_PROCESSES processes on a free loopback port, until the block ends."""
    url = f"http://{LOOPBACK}:{free_port()}"
    log_path.unlink(missing_ok=True)
    command = serve.command(url.removeprefix("http://"), processes=WEB_PROCESSES, access_log=False)
    server = ChildProcess("web", command, env, log_path, cwd=tree)
    try:
        server.wait_until(http_ok(f"{url}/healthz"), WEB_READY_SECONDS)
        yield server, url
    finally:
        server.stop()


def measure(tree: Path, env: dict[str, str], name: str, data: bytes, warm: bytes) -> dict[str, Any]:
    """One format on a fresh web: warmed (every process has decoded, stored and queued an upload), then the burst."""
    with web(tree, env, RESULTS_DIR / f"upload-memory-web-{tree.name}.log") as (server, url):
        at_once(url, warm, WARM_UPLOADS)
        time.sleep(SETTLE_SECONDS)
        sampler = RssSampler(server.pid)
        rest_before = sampler.total()
        started = time.perf_counter()
        with sampler:
            statuses = at_once(url, data, UPLOADS)
        seconds = time.perf_counter() - started
        time.sleep(REST_SECONDS)
        rest_after = sampler.total()
        processes = len(tree_pids(server.pid))
    return {
        "tree": str(tree),
        "picture": name,
        "bytes": len(data),
        "uploads": UPLOADS,
        "statuses": {str(status): statuses.count(status) for status in sorted(set(statuses))},
        "seconds": round(seconds, 2),
        "processes": processes,
        "rest_before_mb": round(rest_before, 1),
        "peak_mb": round(sampler.peak_total, 1),
        "peak_process_mb": round(sampler.peak_process, 1),
        "rest_after_mb": round(rest_after, 1),
    }


def run_tree(tree: Path, base_env: dict[str, str], pictures: dict[str, bytes], warm: bytes) -> list[dict[str, Any]]:
    """Every picture against ``tree``'s web, on its own database and queue prefix."""
    queue_prefix = scratch.unique_name("mnistq-bench-memory")
    with tree_database(tree, base_env) as database_url:
        env = {**base_env, **WEB_ENV, "DATABASE_URL": database_url, "QUEUE_PREFIX": queue_prefix}
        try:
            rows = []
            for name, data in pictures.items():
                rows.append(measure(tree, env, name, data, warm))
                print(f"upload-memory {tree.name}: {rows[-1]}", file=sys.stderr, flush=True)
            return rows
        finally:
            scratch.delete_queues(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"), queue_prefix)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{UPLOADS} concurrent uploads of a {SIDE}x{SIDE} nearly empty picture; web of {WEB_PROCESSES} processes;"
        f" RSS of all its processes, sampled every {SAMPLE_SECONDS * 1000:g} ms; at rest {REST_SECONDS:g} s after",
        f"{'tree':<12}{'picture':<20}{'bytes':>8}  {'answers':<14}{'rest before':>12}{'peak':>8}"
        f"{'peak/process':>14}{'rest after':>12}  (MB)",
    ]
    for row in rows:
        answers = ", ".join(f"{count}x{status}" for status, count in row["statuses"].items())
        lines.append(
            f"{Path(row['tree']).name:<12}{row['picture']:<20}{row['bytes']:>8}  {answers:<14}"
            f"{row['rest_before_mb']:>12.0f}{row['peak_mb']:>8.0f}{row['peak_process_mb']:>14.0f}{row['rest_after_mb']:>12.0f}"
        )
    return lines


def main(against: Path | None) -> list[str]:
    """Each tree in turn (``against`` first), every format on a fresh web: a table, the JSON rows, the files."""
    RESULTS_DIR.mkdir(exist_ok=True)
    pictures = {name: worst_case_picture(form, mode, **options) for name, form, mode, options in PICTURES}
    warm = worst_case_picture("PNG", "L", side=64)
    base_env = environment()
    trees = ([against] if against else []) + [PROJECT_ROOT]
    rows = [row for tree in trees for row in run_tree(tree, base_env, pictures, warm)]
    lines = [*table(rows), "", *(json.dumps(row) for row in rows)]
    (RESULTS_DIR / "upload-memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS_DIR / "upload-memory.txt").write_text("\n".join(lines) + "\n")
    return lines
