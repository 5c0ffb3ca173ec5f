"""A real browser against a real server: Debian's Chromium driven by Playwright, gunicorn serving
the app, the session's Celery worker predicting. Screenshots land in test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from producer import ingest
from shared.db import images as image_store
from tests.support import digits, services

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download is not reachable here; Debian's build is, with these flags
# keeping it off the network it cannot reach anyway.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = services.PROJECT_ROOT / "test-artifacts"
RESULT_TIMEOUT_MS = 20_000
PAD_MARGIN = 40  # px from the pad's edge where the test's stroke starts and ends
JOB_IMAGES = 200


@pytest.fixture(scope="module")
def web_server(worker, worker_env, tmp_path_factory) -> Iterator[services.WebServer]:
    server = services.WebServer(worker_env, tmp_path_factory.mktemp("web") / "web.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, web_server):
    context = browser.new_context(base_url=web_server.url, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_uploading_a_digit_shows_the_right_prediction(page):
    images, labels = digits.mnist_test_digits(1, start=1)
    picture = digits.render_on_paper(images[0], np.random.default_rng(1))
    page.goto("/")
    page.set_input_files("#upload-form input[type=file]", files=[{"name": "digit.png", "mimeType": "image/png", "buffer": picture}])
    page.click("#upload-form button[type=submit]")
    predicted = page.wait_for_selector("#predicted-digit", timeout=RESULT_TIMEOUT_MS)
    assert predicted.inner_text() == str(labels[0])
    assert page.locator(".bars tr").count() == 10
    assert page.eval_on_selector("img.digit-image", "img => img.complete && img.naturalWidth") == 28
    screenshot(page, "upload-result.png")


def test_drawing_a_stroke_gets_a_prediction(page):
    page.goto("/")
    page.click("#draw-form button[type=submit]")
    assert page.inner_text("#draw-hint") == "Draw a digit first."

    pad = page.locator("#pad").bounding_box()
    centre_x = pad["x"] + pad["width"] / 2
    page.mouse.move(centre_x, pad["y"] + PAD_MARGIN)
    page.mouse.down()
    page.mouse.move(centre_x, pad["y"] + pad["height"] - PAD_MARGIN, steps=12)
    page.mouse.up()
    screenshot(page, "drawing.png")
    page.click("#draw-form button[type=submit]")
    predicted = page.wait_for_selector("#predicted-digit", timeout=RESULT_TIMEOUT_MS)
    assert predicted.inner_text() == "1"  # one vertical stroke
    screenshot(page, "drawing-result.png")


def test_job_page_shows_the_confusion_heat_map(page, web_server, conn):
    images, labels = digits.mnist_test_digits(JOB_IMAGES)
    image_store.insert_images(conn, list(ingest.mnist_rows(images, labels, "test")))  # no-op where already stored
    accepted = page.request.post(f"{web_server.url}/api/jobs", data={"split": "test", "limit": JOB_IMAGES})
    assert accepted.status == 202
    page.goto(accepted.json()["page_url"])
    # The page reloads itself until the job is done.
    page.wait_for_selector(".status-done", timeout=RESULT_TIMEOUT_MS)
    assert page.locator("table.heatmap tbody td").count() == 100
    screenshot(page, "job.png")
    page.goto(f"/low-confidence?threshold=0.99&job={accepted.json()['id']}")
    page.wait_for_selector("ul.gallery img")
    # Gallery images load lazily: those in view must arrive as real 28x28 PNGs.
    in_view = "() => [...document.querySelectorAll('ul.gallery img')].slice(0, 4).every(img => img.complete && img.naturalWidth === 28)"
    page.wait_for_function(in_view, timeout=RESULT_TIMEOUT_MS)
    screenshot(page, "low-confidence.png")
