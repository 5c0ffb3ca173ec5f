"""Folder ingest, results export and ``producer run``: images/s, rows/s and peak memory, in one run.

    python -m bench --sections ingest [--ingest-sizes 10000,100000] [--ingest-kind digits|photos]
        [--run-size 100000] [--repeats 3] [--against /tmp/before]

Folders of pictures (``bench/folders.py``: 28×28 PNGs, or 640×480 JPEG photos of a digit on paper)
are ingested by ``python -m producer ingest folder`` of this tree (and of ``--against``, another
worktree, first), each into a database of its own; this tree's then again (everything already
stored: nothing is read). The other tree is not timed again: it would read and decode every file
as the first time, for as long. Peak memory is the most the command's processes held at once (the
process and its pool, summed), sampled: RSS, and PSS, which counts the pages a forked pool shares
with its parent once. CPU is theirs too, per image, and varies less than images/s when other work
shares the machine. ``producer run`` (folder to CSV) is timed against ingest alone
``--repeats`` times, each pair on fresh databases. The export is ``producer results`` of a job whose
images are written by binary COPY and predictions by the worker's store (no model runs).
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import folders
from bench.common import child_pids, private_environment, start_worker
from shared import jobs
from shared.db import connection

SAMPLE_SECONDS = 0.05
EXPORT_CHUNK = 50_000
THIS_TREE = Path(__file__).resolve().parent.parent


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """Resident and proportional memory (RSS, PSS) of a process and its descendants now, summed.

    The pool's processes are forked: pages they share with the parent count in each one's RSS, and once
    in the sum of PSS (a shared page is split between its sharers), which is what they hold together."""
    rss, pss, stack = 0.0, 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
            stack += child_pids(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss, pss


@dataclasses.dataclass
class Timed:
    """One command's wall time, the peaks of its process tree's memory (``tree_memory_mb``), and its output."""

    seconds: float = 0.0
    peak_rss: float = 0.0
    peak_pss: float = 0.0
    output: str = ""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> Timed:
    """Run one command to its end, its memory sampled every ``SAMPLE_SECONDS``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = Timed()

    def sample() -> None:
        while process.poll() is None:
            rss, pss = tree_memory_mb(process.pid)
            result.peak_rss, result.peak_pss = max(result.peak_rss, rss), max(result.peak_pss, pss)
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result.output, _ = process.communicate()
    result.seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.output[-2000:]}")
    return result


def children_cpu_seconds() -> float:
    """User and system seconds of this process's children that have ended (a command and its pool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ingest_rows(sizes: tuple[int, ...], kind: str, against: Path | None, scratch_dir: Path) -> list[str]:
    """images/s of the first ingest; CPU µs per image, the command's processes' own (not PostgreSQL's), which
    other work on the machine changes far less than the wall time; this tree's second ingest's seconds."""
    header = f"folder ingest ({kind})"
    columns = f"{'images':>9}{'images/s':>10}{'CPU µs/img':>11}{'RSS MB':>8}{'PSS MB':>8}{'again s':>9}"
    lines = [f"{header:<44}{columns}"]
    trees = ([("before", against)] if against else []) + [("this tree", THIS_TREE)]
    for size in sizes:
        for name, tree in trees:
            with private_environment() as (env, settings):
                folder = folders.make_folder(scratch_dir, kind, size, settings.mnist_dir)
                command = ingest_command(folder)
                cpu_before = children_cpu_seconds()
                first = timed(command, tree, env)
                cpu = (children_cpu_seconds() - cpu_before) / size * 1e6
                again = f"{timed(command, tree, env).seconds:.2f}" if tree == THIS_TREE else "-"
            rate = size / first.seconds
            memory = f"{first.peak_rss:>8.0f}{first.peak_pss:>8.0f}"
            lines.append(f"{name:<44}{size:>9,}{rate:>10,.0f}{cpu:>11,.0f}{memory}{again:>9}")
    return lines


def ingest_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "producer", "ingest", "folder", str(folder)]


def run_rows(size: int, kind: str, repeats: int, scratch_dir: Path) -> list[str]:
    """``producer run DIR --output CSV`` with one bulk worker process against ``ingest folder`` alone, ``repeats``
    times in turn, each on databases of its own: a pair's ratio holds better than the seconds do when other work
    shares the machine."""
    lines = [f"{f'folder to CSV ({kind}), 1 worker':<44}{'images':>9}{'ingest s':>10}{'run s':>9}{'x ingest':>9}"]
    for repeat in range(1, repeats + 1):
        with private_environment() as (env, settings):
            folder = folders.make_folder(scratch_dir, kind, size, settings.mnist_dir)
            ingest_seconds = timed(ingest_command(folder), THIS_TREE, env).seconds
        with private_environment() as (env, settings), tempfile.TemporaryDirectory() as out:
            worker = start_worker(env, Path(out) / "worker.log", 1)
            try:
                command = [sys.executable, "-m", "producer", "run", str(folder), "--output", f"{out}/r.csv"]
                seconds = timed(command, THIS_TREE, env).seconds
            finally:
                worker.stop()
        ratio = seconds / ingest_seconds
        lines.append(f"{f'run {repeat}':<44}{size:>9,}{ingest_seconds:>10.2f}{seconds:>9.2f}{ratio:>9.2f}")
    return lines


def export_rows(sizes: tuple[int, ...]) -> list[str]:
    """``producer results`` of a job of ``size`` predictions, CSV to a file: rows/s and peak memory."""
    lines = [f"{'results export (CSV)':<44}{'rows':>9}{'rows/s':>10}{'peak MB':>9}"]
    for size in sizes:
        with private_environment() as (env, settings), tempfile.TemporaryDirectory() as out:
            conn = connection.connect(settings.database_url)
            job_id = fill_job(conn, size)
            conn.close()
            command = [sys.executable, "-m", "producer", "results", str(job_id), "--output", f"{out}/r.csv"]
            export = timed(command, THIS_TREE, env)
            lines.append(f"{'this tree':<44}{size:>9,}{size / export.seconds:>10,.0f}{export.peak_rss:>9.0f}")
    return lines


def fill_job(conn: connection.Connection, size: int) -> int:
    """A done job of ``size`` images (written by binary COPY) with a prediction each (no model runs)."""
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


def main(
    sizes: tuple[int, ...],
    kind: str,
    run_size: int,
    repeats: int,
    export_sizes: tuple[int, ...],
    against: Path | None,
) -> list[str]:
    scratch_dir = Path(tempfile.gettempdir()) / "mnistq-bench-ingest"
    scratch_dir.mkdir(exist_ok=True)
    lines = ingest_rows(sizes, kind, against, scratch_dir)
    if run_size:
        lines += ["", *run_rows(run_size, kind, repeats, scratch_dir)]
    if export_sizes:
        lines += ["", *export_rows(export_sizes)]
    return lines
