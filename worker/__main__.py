"""Start the worker: a bulk Celery worker sized to the CPUs, beside an upload consumer.

    python -m worker [more celery worker options, for the bulk worker]

Single uploads get a consumer of their own (``worker/uploads.py``), so a person's picture
never waits behind a bulk batch (a batch of 1024 takes ~100 ms); the bulk worker
(``worker/bulk.py``) runs at a lower CPU priority (WORKER_NICENESS). When either exits, the
other is stopped too, so a container never runs half a worker. The container image and
the local stack (``./run up``) both start workers this way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
BULK_WORKER = [sys.executable, "-m", "worker.bulk"]
UPLOAD_CONSUMER = [sys.executable, "-m", "worker.uploads"]


def main(extra_args: list[str]) -> int:
    workers = [subprocess.Popen([*BULK_WORKER, *extra_args]), subprocess.Popen(UPLOAD_CONSUMER)]

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
