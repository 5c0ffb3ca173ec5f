"""A tiny file must not cost a big decode: memory per decode and decodes per process are bounded."""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import pytest
from PIL import Image, ImageDraw

from bench.upload_memory import SIDE, worst_case_picture
from shared.config import PROJECT_ROOT
from shared.images import preprocess

MAX_PIXELS = 16_000_000


PEAK_SCRIPT = """
import resource, sys
from shared.images.preprocess import user_image_to_mnist
data = sys.stdin.buffer.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digit = user_image_to_mnist(data, int(sys.argv[1]))
assert digit.any()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize(
    ("image_format", "mode", "options"),
    [("PNG", "RGBA", {}), ("PNG", "L", {}), ("JPEG", "L", {"quality": 80}), ("GIF", "L", {}), ("BMP", "L", {})],
)
def test_a_worst_case_picture_decodes_within_the_budget(image_format, mode, options):
    data = worst_case_picture(image_format, mode, **options)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(MAX_PIXELS)],
        input=data,
        capture_output=True,
        cwd=PROJECT_ROOT,
        timeout=60,
        check=True,
    )
    peak_mb = int(run.stdout)
    assert peak_mb <= preprocess.DEFAULT_MAX_DECODE_BYTES / 2**20, f"{image_format} {mode}: {peak_mb} MB at its peak"


def test_a_picture_that_would_cost_more_than_the_budget_is_refused_before_decoding():
    data = worst_case_picture("WEBP", "RGBA", lossless=True)
    assert len(data) < 20_000
    with pytest.raises(ValueError, match="too large to decode as WEBP; at most about"):
        preprocess.open_user_image(data, MAX_PIXELS)
    assert preprocess.open_user_image(data, MAX_PIXELS, max_decode_bytes=SIDE * SIDE * 16).size == (SIDE, SIDE)


def test_a_process_decodes_no_more_pictures_at_once_than_its_slots():
    small = io.BytesIO()
    picture = Image.new("L", (60, 60), 255)
    ImageDraw.Draw(picture).ellipse((15, 10, 45, 50), outline=0, width=5)
    picture.save(small, "PNG")
    slots = preprocess.decode_slots(1)
    finished = threading.Event()

    def decode() -> None:
        preprocess.user_image_to_mnist(small.getvalue(), MAX_PIXELS, concurrent_decodes=1)
        finished.set()

    with slots:  # the one slot is taken: the decode waits for it
        worker = threading.Thread(target=decode)
        worker.start()
        assert not finished.wait(0.3)
    assert finished.wait(10)
    worker.join()
