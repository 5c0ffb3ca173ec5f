"""Folder ingest, results export and ``producer run``: images/s, rows/s and peak memory, in one run.

    python -m bench --sections ingest [--ingest-sizes 10000,100000] [--against /tmp/before]

Folders of 28×28 PNGs (MNIST's test digits, dark on light, as users draw them) are ingested by
``python -m producer ingest folder`` of this tree (and of ``--against``, another worktree, first),
each into a database of its own, then ingested again (everything already stored). Peak memory is
the most the command's processes held at once (the process and its pool, summed), sampled; CPU is
theirs too, per image, and varies less than images/s when other work shares the machine.
The export is ``producer results`` of a job whose predictions are written by binary COPY.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import child_pids, private_environment, start_worker
from shared import jobs
from shared.db import connection
from shared.training import mnist

SAMPLE_SECONDS = 0.05
EXPORT_CHUNK = 50_000


def make_folder(folder: Path, count: int, mnist_dir: Path) -> Path:
    """``count`` PNGs under 0-9 subfolders, made once and kept for later runs."""
    done = folder / ".complete"
    if done.exists():
        return folder
    digits, labels = mnist.load_split(mnist_dir, "test")
    for index in range(count):
        sub = folder / str(labels[index % len(labels)])
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - digits[index % len(digits)]).save(sub / f"{index:07d}.png")
    done.touch()
    return folder


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants now."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            stack += child_pids(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak MB of the process tree, its output) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {output[-2000:]}")
    return seconds, peak[0], output


def children_cpu_seconds() -> float:
    """User and system seconds of this process's children that have ended (a command and its pool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ingest_rows(sizes: tuple[int, ...], against: Path | None, scratch_dir: Path) -> list[str]:
    """images/s of the first ingest; CPU µs per image, the command's processes' own (not PostgreSQL's), which
    other work on the machine changes far less than the wall time; the second ingest's seconds."""
    lines = [f"{'folder ingest':<44}{'images':>9}{'images/s':>10}{'CPU µs/img':>11}{'peak MB':>9}{'again s':>9}"]
    trees = ([("before", against)] if against else []) + [("this tree", Path(__file__).resolve().parent.parent)]
    for size in sizes:
        for name, tree in trees:
            with private_environment() as (env, settings):
                folder = make_folder(scratch_dir / f"pngs-{size}", size, settings.mnist_dir)
                command = [sys.executable, "-m", "producer", "ingest", "folder", str(folder)]
                cpu_before = children_cpu_seconds()
                seconds, peak, output = timed(command, tree, env)
                cpu = (children_cpu_seconds() - cpu_before) / size * 1e6
                again, _, _ = timed(command, tree, env)
            lines.append(f"{name:<44}{size:>9,}{size / seconds:>10,.0f}{cpu:>11,.0f}{peak:>9.0f}{again:>9.2f}")
    return lines


def run_rows(size: int, scratch_dir: Path) -> list[str]:
    """``producer run DIR --output CSV`` with one bulk worker process against ``ingest folder`` alone."""
    lines = [f"{'folder to CSV (producer run), 1 worker':<44}{'images':>9}{'seconds':>10}{'x ingest':>9}"]
    tree = Path(__file__).resolve().parent.parent
    with private_environment() as (env, settings):
        folder = make_folder(scratch_dir / f"pngs-{size}", size, settings.mnist_dir)
        ingest_seconds, _, _ = timed([sys.executable, "-m", "producer", "ingest", "folder", str(folder)], tree, env)
    with private_environment() as (env, settings), tempfile.TemporaryDirectory() as out:
        worker = start_worker(env, Path(out) / "worker.log", 1)
        try:
            seconds, _, _ = timed(
                [sys.executable, "-m", "producer", "run", str(folder), "--output", f"{out}/r.csv"], tree, env
            )
        finally:
            worker.stop()
    lines.append(f"{'ingest folder alone':<44}{size:>9,}{ingest_seconds:>10.2f}{1:>9.2f}")
    lines.append(f"{'producer run':<44}{size:>9,}{seconds:>10.2f}{seconds / ingest_seconds:>9.2f}")
    return lines


def export_rows(sizes: tuple[int, ...]) -> list[str]:
    """``producer results`` of a job of ``size`` predictions, CSV to a file: rows/s and peak memory."""
    lines = [f"{'results export (CSV)':<44}{'rows':>9}{'rows/s':>10}{'peak MB':>9}"]
    tree = Path(__file__).resolve().parent.parent
    for size in sizes:
        with private_environment() as (env, settings), tempfile.TemporaryDirectory() as out:
            conn = connection.connect(settings.database_url)
            job_id = fill_job(conn, size)
            conn.close()
            command = [sys.executable, "-m", "producer", "results", str(job_id), "--output", f"{out}/r.csv"]
            seconds, peak, _ = timed(command, tree, env)
            lines.append(f"{'this tree':<44}{size:>9,}{size / seconds:>10,.0f}{peak:>9.0f}")
    return lines


def fill_job(conn: connection.Connection, size: int) -> int:
    """A done job of ``size`` images with a prediction each, written by binary COPY (no model runs)."""
    from shared.images import bulk_load

    rng = np.random.default_rng(0)
    image = bytes(800)
    for start in range(0, size, EXPORT_CHUNK):
        count = min(EXPORT_CHUNK, size - start)
        rows = ((image, int(k % 10), [28, 28], "train", 10_000_000 + start + k) for k in range(count))
        bulk_load.copy_image_rows(conn, rows)
    ids = [row[0] for row in connection.query(conn, "SELECT id FROM input_data ORDER BY id")]
    job_id = jobs.store.create_job(conn, ids, "bench", {"bench": "export"})
    for start in range(0, size, EXPORT_CHUNK):
        chunk = ids[start : start + EXPORT_CHUNK]
        probabilities = rng.dirichlet(np.ones(10), len(chunk)).astype(np.float32)
        jobs.results.store_results(conn, job_id, "bench", jobs.results.PredictionBatch.of(chunk, probabilities), [])
    return job_id


def main(sizes: tuple[int, ...], export_sizes: tuple[int, ...], against: Path | None) -> list[str]:
    scratch_dir = Path(tempfile.gettempdir()) / "mnistq-bench-ingest"
    scratch_dir.mkdir(exist_ok=True)
    lines = ingest_rows(sizes, against, scratch_dir)
    if sizes:
        lines += ["", *run_rows(sizes[0], scratch_dir)]
    if export_sizes:
        lines += ["", *export_rows(export_sizes)]
    return lines
