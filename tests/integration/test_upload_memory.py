"""A burst of worst-case uploads keeps a real web process within its decode budget, and the memory goes back.

A 4000x4000 RGBA PNG of a thin ring is some 80 kB on the wire and many megabytes decoded. With the
decode budget (MAX_DECODE_MEGABYTES), the decode slots (CONCURRENT_DECODES) and malloc told to give
freed memory back (shared/host/memory.py), a process holds at most its slots' worth of decodes,
however many arrive at once, and is back near its size at rest soon after. Figures for every format:
``python -m bench --sections upload-memory``.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import child_pids
from bench.upload_memory import RssSampler, at_once, rss_mb, worst_case_picture
from shared.config import Settings, load_settings
from tests.support.services import WebServer

UPLOADS = 8
WARM_UPLOADS = 4
# What a process may add beyond its decode slots at the peak: the request bodies, Pillow's and numpy's
# small buffers, the threads' stacks as they run; and what it may keep once the burst is over.
PEAK_MARGIN_MB = 60
REST_MARGIN_MB = 30
SETTLE_SECONDS = 1.0
REST_SECONDS = 3.0


def test_worst_case_uploads_at_once_stay_within_the_decode_budget_and_memory_returns(
    worker_env: dict[str, str], private_queue: Settings, tmp_path: Path
) -> None:
    # No consumer reads the private queue: the uploads are decoded, stored and queued, nothing more.
    env = {**worker_env, "QUEUE_PREFIX": private_queue.queue_prefix, "UPLOAD_RATE_LIMIT": "off"}
    settings = load_settings(env)
    picture = worst_case_picture("PNG", "RGBA")
    server = WebServer(env, tmp_path / "web.log", workers=1)
    try:
        server.wait_ready()
        # The first uploads open the pools and load the decoders: what any process has after its first minutes.
        assert at_once(server.url, worst_case_picture("PNG", "L", side=64), WARM_UPLOADS) == [202] * WARM_UPLOADS
        (process,) = child_pids(server.pid)  # granian's one serving process
        time.sleep(SETTLE_SECONDS)
        start = rss_mb(process)
        with RssSampler(process) as sampler:
            statuses = at_once(server.url, picture, UPLOADS)
        time.sleep(REST_SECONDS)
        rest = rss_mb(process)
    finally:
        server.stop()
    assert statuses == [202] * UPLOADS, server.log_tail()
    bound = start + settings.concurrent_decodes * settings.max_decode_megabytes + PEAK_MARGIN_MB
    peak = sampler.peak_process
    assert peak <= bound, f"peak {peak:.0f} MB, from {start:.0f} MB at rest; bound {bound:.0f} MB"
    assert rest <= start + REST_MARGIN_MB, f"{rest:.0f} MB {REST_SECONDS:g} s after the burst, {start:.0f} MB before it"
