"""A real browser against a real server: Debian's Chromium driven by Playwright, web.serve (granian) serving
the app, the session's Celery worker predicting. Screenshots land in test-artifacts/; those of the
upload's answer, a job and the mistakes also in the docs' pictures folder when MNIST_DOCS_SCREENSHOTS
names one (tests/support/pictures.py).

Every page is checked for its Content-Security-Policy header and for inline script, inline style
and event-handler attributes (none), and the browser must report no CSP violation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from producer import ingest
from shared import images
from shared.db import connection
from tests.support import digits, pictures, services

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
JOB_IMAGES = 2000  # enough for the job's confusion matrix and the mistakes page to show some mistakes
# What each page must carry; the full policy is web/security.py's.
CSP_PARTS = ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'")
INLINE_CODE = """() => ({
  inlineScripts: [...document.scripts].filter(script => !script.src).length,
  styleAttributes: document.querySelectorAll('[style]').length,
  handlerAttributes: [...document.querySelectorAll('*')]
    .filter(el => [...el.attributes].some(a => a.name.startsWith('on'))).length,
})"""


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
    # Chromium reports every resource the Content-Security-Policy blocked on the console.
    page.on(
        "console", lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None
    )
    page.on(
        "response", lambda response: check_headers(response) if response.request.resource_type == "document" else None
    )
    yield page
    context.close()
    assert not errors, f"JavaScript errors or CSP violations: {errors}"


def check_headers(response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert all(part in policy for part in CSP_PARTS), (response.url, policy)
    assert response.headers.get("x-content-type-options") == "nosniff" and response.headers.get("referrer-policy"), (
        response.url
    )


def assert_no_inline_code(page) -> None:
    assert page.evaluate(INLINE_CODE) == {"inlineScripts": 0, "styleAttributes": 0, "handlerAttributes": 0}, page.url


@pytest.fixture(scope="module")
def operator_name(database_url) -> str:
    conn = connection.connect(database_url)
    try:
        return services.add_operator(conn, "browser-op")[1]
    finally:
        conn.close()


def sign_in(page, name: str) -> None:
    """Through the sign-in form, as an operator would; the page it asked for comes next."""
    page.fill("#sign-in-form input[name=name]", name)
    page.fill("#sign-in-form input[name=password]", services.OPERATOR_PASSWORD)
    page.click("#sign-in-form button[type=submit]")


def screenshot(page, name: str, for_docs: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if for_docs:
        pictures.save_for_docs(page, name)


def test_uploading_a_digit_shows_the_right_prediction(page):
    images, labels = digits.mnist_test_digits(1, start=1)
    picture = digits.render_on_paper(images[0], np.random.default_rng(1))
    page.goto("/")
    page.set_input_files(
        "#upload-form input[type=file]", files=[{"name": "digit.png", "mimeType": "image/png", "buffer": picture}]
    )
    page.click("#upload-form button[type=submit]")
    predicted = page.wait_for_selector("#predicted-digit", timeout=RESULT_TIMEOUT_MS)
    assert predicted.inner_text() == str(labels[0])
    assert page.locator(".bars tr").count() == 10 and page.locator(".bars meter").count() == 10
    # The picture loads after the answer is shown: wait for it, then check it is the 28 px digit.
    page.wait_for_function("document.querySelector('img.digit-image').complete", timeout=RESULT_TIMEOUT_MS)
    assert page.eval_on_selector("img.digit-image", "img => img.naturalWidth") == 28
    assert_no_inline_code(page)
    screenshot(page, "upload-result.png", for_docs=True)


def test_drawing_a_stroke_gets_a_prediction(page):
    page.goto("/")
    assert_no_inline_code(page)  # the pad's script is static/draw.js
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


def test_an_operator_signs_in_for_the_job_and_mistakes_pages(page, web_server, conn, operator_name):
    digit_images, labels = digits.mnist_test_digits(JOB_IMAGES)
    images.store.insert_images(
        conn, list(ingest.mnist_rows(digit_images, labels, "test"))
    )  # no-op where already stored
    # A program starts the job with an API token; the browser holds no session yet.
    bearer = {"Authorization": f"Bearer {services.operator_token(conn)}"}
    accepted = page.request.post(
        f"{web_server.url}/api/jobs", data={"split": "test", "limit": JOB_IMAGES}, headers=bearer
    )
    assert accepted.status == 202
    job_id = accepted.json()["id"]

    page.goto(accepted.json()["page_url"])  # anonymous: sent to the sign-in form, and back after it
    assert page.url.startswith(f"{web_server.url}/sign-in?next=")
    assert_no_inline_code(page)
    screenshot(page, "sign-in.png")
    sign_in(page, operator_name)
    assert page.url == f"{web_server.url}/jobs/{job_id}"
    # The page reloads itself until the job is done.
    page.wait_for_selector(".status-done", timeout=RESULT_TIMEOUT_MS)
    assert page.locator("table.heatmap tbody td").count() == 100
    assert page.locator("table.heatmap td[class*=heat-right-]").count() == 10  # the diagonal's shades are classes
    assert (
        page.eval_on_selector("table.heatmap tbody td.heat-right-10", "td => getComputedStyle(td).backgroundColor")
        != "rgba(0, 0, 0, 0)"
    )
    assert_no_inline_code(page)
    screenshot(page, "job.png", for_docs=True)

    page.goto(f"/low-confidence?threshold=0.99&job={job_id}")
    page.wait_for_selector("ul.gallery img")
    # Gallery images load lazily: those in view must arrive as real 28x28 PNGs.
    in_view = (
        "() => [...document.querySelectorAll('ul.gallery img')].slice(0, 4)"
        ".every(img => img.complete && img.naturalWidth === 28)"
    )
    page.wait_for_function(in_view, timeout=RESULT_TIMEOUT_MS)
    assert_no_inline_code(page)
    screenshot(page, "low-confidence.png")

    page.goto(f"/mistakes?job={job_id}")
    assert page.locator("h1").inner_text() == "Mistakes"
    assert page.locator("ul.gallery b.wrong").count() > 0  # a model right on all 2,000 would be news
    page.wait_for_function(in_view, timeout=RESULT_TIMEOUT_MS)
    assert_no_inline_code(page)
    screenshot(page, "mistakes.png", for_docs=True)

    page.goto("/jobs")
    assert page.locator(f'a[href="/jobs/{job_id}"]').count() == 1 and page.locator("table.jobs progress").count() > 0
    assert_no_inline_code(page)
    page.click("header form.sign-out button")
    page.goto("/mistakes")
    assert page.url.startswith(f"{web_server.url}/sign-in?next=")  # signed out: the session is gone


def test_an_operator_uploads_a_zip_of_pictures_and_downloads_the_results(page, web_server, operator_name, tmp_path):
    import zipfile

    digit_images, _ = digits.mnist_test_digits(3)
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for index, image in enumerate(digit_images):
            packed.writestr(f"digits/{index}.png", digits.render_on_paper(image, np.random.default_rng(index)))
        packed.writestr("notes.txt", "not a picture")
    page.goto("/batches/new")
    sign_in(page, operator_name)
    assert page.url == f"{web_server.url}/batches/new"
    page.set_input_files("#batch-form input[name=files]", str(archive))
    page.click("#batch-form button[type=submit]")
    page.wait_for_url(f"{web_server.url}/jobs/*")
    assert "skipped notes.txt: not a picture" in page.content()
    page.wait_for_selector(".status-done", timeout=RESULT_TIMEOUT_MS)
    assert_no_inline_code(page)
    screenshot(page, "batch-job.png")
    with page.expect_download() as download:
        page.click("#download-results")
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("image_id,source,") and len(rows) == 4

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    page.goto("/batches/new")
    page.set_input_files("#batch-form input[name=files]", str(bad))
    page.click("#batch-form button[type=submit]")
    assert "not a readable .zip archive" in page.locator("#batch-error").inner_text()
