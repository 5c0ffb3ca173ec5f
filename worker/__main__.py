"""Start the worker: a bulk Celery worker sized to the CPUs, beside an upload consumer.

    python -m worker [more celery worker options, for the bulk worker]

Single uploads get a consumer of their own (``worker/uploads.py``), so a person's picture
never waits behind a bulk batch, which takes far longer than one picture; the bulk worker
(``worker/bulk.py``) runs at a lower CPU priority (WORKER_NICENESS). When either exits, the
other is stopped too, so a container never runs half a worker. The container image and
the local stack (``./run up``) both start workers this way.

This parent also serves the metrics of both and of the bulk worker's pool processes
(``worker/exporter.py``): before starting them it makes this start's metrics folder, which they
inherit in PROMETHEUS_MULTIPROC_DIR, and removes it when they are gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared import observability
from shared.config import Settings, load_settings
from worker import exporter

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
BULK_WORKER = [sys.executable, "-m", "worker.bulk"]
UPLOAD_CONSUMER = [sys.executable, "-m", "worker.uploads"]
METRICS_SERVICE = "worker"


def main(extra_args: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/worker] %(message)s")
    settings = load_settings()
    directory = observability.files.prepare(observability.files.service_directory(settings, METRICS_SERVICE))
    try:
        return run_pair(extra_args, settings, directory)
    finally:
        observability.files.remove(directory)


def run_pair(extra_args: list[str], settings: Settings, metrics_directory: Path) -> int:
    workers = [subprocess.Popen([*BULK_WORKER, *extra_args]), subprocess.Popen(UPLOAD_CONSUMER)]
    exporter.start(settings, metrics_directory)

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    _, status = os.wait()  # the first worker to exit ends the pair
    forward(signal.SIGTERM, None)
    for worker in workers:
        worker.wait()
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
