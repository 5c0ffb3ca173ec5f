"""``python -m worker``: a bulk worker and an upload consumer that start and stop as one."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from shared import images, jobs, queues
from shared.config import load_settings
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.progress import wait_for_job
from stack.processes import ChildProcess
from stack.scratch import unique_name
from tests.support import services

IMAGE = encode_image(np.zeros((28, 28), np.uint8))


def child_commands(pid: int) -> list[list[str]]:
    """The command lines of a process's children."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")[:-1] for child in found.stdout.split()]


def test_both_workers_serve_their_queue_and_stop_together(worker_env, conn, tmp_path):
    env = {**worker_env, "QUEUE_PREFIX": unique_name("mnistq-main")}
    config = load_settings(env)
    process = services.Workers(env, tmp_path / "worker.log")
    try:
        process.wait_ready()
        # Two children, each a lane of its own: the bulk Celery worker and the upload consumer.
        assert sorted(command[1:3] for command in child_commands(process.pid)) == [
            ["-m", "worker.bulk"],
            ["-m", "worker.uploads"],
        ]
        ids = images.store.insert_images(conn, [ImageRow(IMAGE, None, [28, 28], "upload", None, None)])
        version = services.production_version(conn)
        bulk_job = jobs.service.submit_job(
            conn, queues.broker.celery_app(config), config, jobs.service.Selection(image_ids=tuple(ids)), version, 1
        ).id
        upload_job = jobs.service.submit_upload(conn, config, IMAGE, version, {"upload": None}).id
        for job_id in (bulk_job, upload_job):  # each can only have been served by its own lane
            assert wait_for_job(conn, job_id, timeout=30)["status"] == "done"

        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=60) == 0
        # Nothing of the process group is left: the celery worker, its pool and the consumer are gone.
        assert subprocess.run(["pgrep", "-g", str(process.process.pid)], capture_output=True).returncode == 1
    finally:
        process.stop()


def test_the_health_check_passes_while_the_upload_consumer_runs_and_fails_without_one(worker, worker_env):
    # Its exit status is what Docker acts on; its one line of output is what an operator reads.
    healthy = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=worker_env, capture_output=True, text=True, timeout=30
    )
    assert healthy.returncode == 0 and "healthy: upload consumer" in healthy.stdout
    no_consumer = {**worker_env, "QUEUE_PREFIX": unique_name("mnistq-nobody")}
    unhealthy = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=no_consumer, capture_output=True, text=True, timeout=30
    )
    assert unhealthy.returncode == 1 and "no upload consumer of this host" in unhealthy.stderr
    redis_down = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0"}
    unreachable = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=redis_down, capture_output=True, text=True, timeout=30
    )
    assert unreachable.returncode == 1 and "Redis does not answer" in unreachable.stderr


def test_the_liveness_check_passes_through_a_redis_outage_that_fails_the_readiness_check(worker_env, tmp_path):
    # Kubernetes restarts a container whose liveness probe fails (deploy/kubernetes/workers.yaml): an
    # outage of Redis must leave the consumer's loop turning and the probe passing, unlike readiness.
    liveness_file = tmp_path / "alive"
    redis_down = {
        **worker_env,
        "REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0",
        "WORKER_LIVENESS_FILE": str(liveness_file),
    }
    consumer = ChildProcess(
        "upload consumer", [sys.executable, "-m", "worker.uploads"], redis_down, tmp_path / "uploads.log"
    )
    try:
        consumer.wait_until(liveness_file.exists, 60)
        touched = liveness_file.stat().st_mtime_ns
        consumer.wait_until(lambda: liveness_file.stat().st_mtime_ns > touched, 10)  # touched again, between retries
        assert b"Redis unavailable" in consumer.log_path.read_bytes()
        alive = subprocess.run(
            [sys.executable, "-m", "worker.health", "--liveness"],
            env=redis_down,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert alive.returncode == 0 and "alive: the upload consumer turned its loop" in alive.stdout
        ready = subprocess.run(
            [sys.executable, "-m", "worker.health"], env=redis_down, capture_output=True, text=True, timeout=30
        )
        assert ready.returncode == 1 and "Redis does not answer" in ready.stderr
    finally:
        consumer.stop()
