"""A Celery worker, or an upload consumer, with injected faults, for the poison-input tests.

    python -m tests.support.crashing_worker [celery worker options]   the bulk worker (worker.bulk)
    python -m tests.support.crashing_worker uploads                   the upload consumer

An image whose stored bytes are ``CRASH_MARKER`` kills the worker process outright
(as a segfaulting model would); one whose bytes are ``FAIL_MARKER`` makes inference raise.
``SLOW_CHUNK_SECONDS`` (default 0) makes every chunk take at least that long, as on a slower
machine: a test that must catch a worker with a batch half stored gets a window of its own
choosing, whatever this machine's speed.
"""

import os
import sys
import time

from worker import batch

CRASH_MARKER = b"poison: kill the worker process"
FAIL_MARKER = b"poison: make inference raise"

_decode_batch = batch.decode_batch


SLOW_CHUNK_SECONDS = float(os.environ.get("SLOW_CHUNK_SECONDS", "0"))


def decode_batch_with_faults(image_ids, stored):
    time.sleep(SLOW_CHUNK_SECONDS)
    markers = set(stored.values())
    if CRASH_MARKER in markers:
        os._exit(1)
    if FAIL_MARKER in markers:
        raise RuntimeError("injected inference failure")
    return _decode_batch(image_ids, stored)


batch.decode_batch = decode_batch_with_faults

if __name__ == "__main__" and sys.argv[1:] == ["uploads"]:
    from worker.uploads import main as consume_uploads

    sys.exit(consume_uploads())
elif __name__ == "__main__":
    from worker.bulk import main as bulk_worker

    sys.exit(bulk_worker(sys.argv[1:]))
