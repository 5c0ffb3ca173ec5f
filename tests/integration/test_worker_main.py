"""``python -m worker``: a bulk worker and an upload consumer that start and stop as one."""

import dataclasses
import signal
import subprocess
import sys

import numpy as np

from shared import db, upload_queue
from shared.config import settings
from shared.images import encode_image
from shared.tasks import bulk_queue, celery_app, enqueue_batches
from tests import services


def test_both_workers_serve_their_queue_and_stop_together(worker_env, conn, tmp_path):
    env = {**worker_env, "QUEUE_PREFIX": services.unique_name("mnistq-main")}
    process = services.Workers(env, tmp_path / "worker.log")
    try:
        process.wait_ready()
        ids = db.insert_images(conn, [db.ImageRow(encode_image(np.zeros((28, 28), np.uint8)), None, [28, 28], "upload", None, None)])
        bulk_job, upload_job = (db.create_job(conn, ids, "m", {}, kind=kind) for kind in ("bulk", "upload"))
        config = dataclasses.replace(settings(), queue_prefix=env["QUEUE_PREFIX"])
        enqueue_batches(celery_app(config), bulk_job, ids, 1, bulk_queue(config))
        upload_queue.enqueue(config, upload_job, ids)
        for job_id in (bulk_job, upload_job):
            assert services.wait_for_job(conn, job_id, timeout=30)["status"] == "done"
        log = process.log_path.read_text()
        assert "bulk-" in log and "upload consumer" in log

        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=60) == 0
        # Nothing of the process group is left: the celery worker, its pool and the consumer are gone.
        assert subprocess.run(["pgrep", "-g", str(process.process.pid)], capture_output=True).returncode == 1
    finally:
        process.stop()


def test_the_health_check_passes_while_the_upload_consumer_runs_and_fails_without_one(worker, worker_env):
    healthy = subprocess.run([sys.executable, "-m", "worker.health"], env=worker_env, capture_output=True, text=True, timeout=30)
    assert healthy.returncode == 0 and "healthy: upload consumer" in healthy.stdout
    no_consumer = {**worker_env, "QUEUE_PREFIX": services.unique_name("mnistq-nobody")}
    unhealthy = subprocess.run([sys.executable, "-m", "worker.health"], env=no_consumer, capture_output=True, text=True, timeout=30)
    assert unhealthy.returncode == 1 and "no upload consumer of this host" in unhealthy.stderr
    redis_down = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0"}
    unreachable = subprocess.run([sys.executable, "-m", "worker.health"], env=redis_down, capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 1 and "Redis does not answer" in unreachable.stderr
