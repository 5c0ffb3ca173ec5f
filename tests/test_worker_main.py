"""``python -m worker``: a bulk worker and an upload worker that start and stop as one."""

import dataclasses
import signal
import subprocess
import sys

import numpy as np

from shared import db
from shared.config import settings
from shared.images import encode_image
from shared.tasks import bulk_queue, celery_app, enqueue_batches, upload_queue
from tests import services


def test_both_workers_serve_their_queue_and_stop_together(worker_env, conn, tmp_path):
    env = {**worker_env, "QUEUE_PREFIX": services.unique_name("mnistq-main"), "WORKER_CONCURRENCY": "1"}
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "worker", "--without-gossip", "--without-mingle"]
    process = services.ChildProcess("python -m worker", command, env, log_path)
    try:
        process.wait_until(lambda: log_path.read_bytes().count(b" ready.") == 2, timeout=90)
        ids = db.insert_images(conn, [db.ImageRow(encode_image(np.zeros((28, 28), np.uint8)), None, [28, 28], "upload", None, None)])
        bulk_job, upload_job = (db.create_job(conn, ids, "m", {}, kind=kind) for kind in ("bulk", "upload"))
        config = dataclasses.replace(settings(), queue_prefix=env["QUEUE_PREFIX"])
        enqueue_batches(celery_app(config), bulk_job, ids, 1, bulk_queue(config))
        enqueue_batches(celery_app(config), upload_job, ids, 1, upload_queue(config))
        for job_id in (bulk_job, upload_job):
            assert services.wait_for_job(conn, job_id, timeout=30)["status"] == "done"
        log = log_path.read_text()
        assert "bulk-" in log and "upload-" in log

        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=60) == 0
        # Nothing of the process group is left: both celery workers and their pools are gone.
        assert subprocess.run(["pgrep", "-g", str(process.process.pid)], capture_output=True).returncode == 1
    finally:
        process.stop()
