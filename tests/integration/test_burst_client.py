"""The burst benchmark's client against a real web and worker: every upload answered with its
prediction, and keep-alive carrying many uploads per connection where close opens one each.

Rates and latencies are the benchmark's business (``python -m bench --sections burst``);
this checks only that what it counts is what happened.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import burst_client
from shared.images.codec import png_bytes
from tests.support import digits
from tests.support.services import WebServer

RATE = 25  # uploads per second, for a second: 40 ms apart, several times what one answer takes
SECONDS = 1.0


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    images, _ = digits.mnist_test_digits(10)
    return [png_bytes(image) for image in images]


@pytest.mark.parametrize("mode", burst_client.MODES)
def test_every_upload_of_a_burst_is_answered_with_its_prediction(worker, worker_env, tmp_path, pictures, mode):
    server = WebServer({**worker_env, "UPLOAD_RATE_LIMIT": "off"}, tmp_path / "web.log", workers=1)
    try:
        server.wait_ready()
        asyncio.run(
            burst_client.load(server.url, 10, 0.5, pictures, mode)
        )  # the first answers start the pool and the listener
        outcomes, opened = asyncio.run(burst_client.load(server.url, RATE, SECONDS, pictures, mode))
    finally:
        server.stop()
    sent = int(RATE * SECONDS)
    assert len(outcomes) == sent
    assert [(status, state) for status, _, state in outcomes] == [(200, "done")] * sent
    if mode == "close":
        assert opened == sent
    else:  # most uploads find an earlier one's connection free again: a slow answer now and then opens another
        assert opened <= sent // 2, opened


def test_the_client_refuses_to_load_anything_but_loopback(pictures):
    with pytest.raises(SystemExit, match="loopback only"):
        asyncio.run(burst_client.load("http://192.0.2.1:80", RATE, SECONDS, pictures))
