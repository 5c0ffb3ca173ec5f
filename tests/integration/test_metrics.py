"""The metrics as an operator gets them: a real Prometheus (Debian's ``prometheus`` package) scraping a
real web server (web/serve.py) and a real ``python -m worker`` every second, queried through its HTTP API while a
job and some uploads run; the dashboard's and the alerts' queries evaluated by that Prometheus;
``promtool`` over the deploy/prometheus files.

Prometheus' own graph page of three of the Grafana dashboard's queries during the job (throughput,
queue depth, bulk stage timings) is saved as test-artifacts/prometheus-dashboard-queries.png, and for
the docs when MNIST_DOCS_SCREENSHOTS names a folder (tests/support/pictures.py). Grafana itself is
not installable from the package registries this project's machines reach, so the picture is
Prometheus', not the dashboard's.

Skipped only where the ``prometheus`` binary (or ``promtool``, for its tests) is missing, never in
CI, whose .ci/run installs the package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bench.common import child_pids
from producer.cli import main as producer_cli
from shared import queues
from shared.config import Settings
from shared.observability.queues import read_queues
from stack import scratch
from stack.processes import ChildProcess, free_port
from tests.integration.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.support import digits, pictures, services

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
DEPLOY = services.PROJECT_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "mnist-queue.json"
SCRAPE_SECONDS = 1
WAIT_SECONDS = 20  # for a condition Prometheus should meet within a few scrapes
BATCH_SIZE = 200  # the bundled 10,000 test images in 50 batches: several seconds of scrapes
UPLOADS = 3  # what UPLOAD_RATE_LIMIT below lets through; the next one is refused with 429
IMAGES_PER_SECOND = 'sum(rate(mnist_images_predicted_total{queue="bulk"}[30s]))'
GRAPHED = "sum by (queue) (rate(mnist_images_predicted_total[5s]))"
SCREENSHOT = "prometheus-dashboard-queries.png"
# The dashboard's panels shown on the screenshot, by title, each with the index of its query shown.
PICTURED_PANELS = {
    "Throughput: images predicted per second": 0,
    "Queue depth": 0,
    "Bulk batch stages, p95": 0,
}
# What Grafana makes of $__rate_interval at this scrape interval: four scrapes.
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"
GRAPHED_RANGE = "30s"  # the job, from its queue filling up to its curve coming down, takes some 15 s


def need(binary: str | None, package_binary: str) -> str:
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{package_binary} is missing: .ci/run installs it (apt-get install prometheus)")
        pytest.skip(f"{package_binary} is missing: apt-get install prometheus")
    return binary


@dataclasses.dataclass
class Monitored:
    settings: Settings  # the private queues' settings, as the web and the worker read them
    prometheus_url: str
    web: services.WebServer
    worker: services.Workers

    def query(self, expression: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of ``expression`` now, None when it has none."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def eventually(self, expression: str, timeout: float = WAIT_SECONDS) -> list[dict]:
        """The result of ``expression`` once it has one (a comparison that holds), failing after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expression)
            if result:
                return result
            time.sleep(SCRAPE_SECONDS / 2)
        targets = [
            (t["labels"]["job"], t["health"], t["lastError"]) for t in self.get("/api/v1/targets")["activeTargets"]
        ]
        raise AssertionError(f"Prometheus never had {expression!r} within {timeout} s; targets: {targets}")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.prometheus_url}{path}", timeout=5) as response:
            return json.load(response)["data"]


def prometheus_config(web_port: int, worker_port: int) -> dict:
    def job(name: str, port: int) -> dict:
        return {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [job("web", web_port), job("worker", worker_port)],
    }


@pytest.fixture(scope="module")
def monitored(
    worker_env: dict[str, str], settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    """A web and a worker on queues of their own, each exporting metrics, and a Prometheus scraping both."""
    binary = need(PROMETHEUS, "prometheus")
    folder = tmp_path_factory.mktemp("metrics")
    prefix, worker_port, prometheus_port = scratch.unique_name("mnistq-metrics"), free_port(), free_port()
    env = {
        **worker_env,
        "QUEUE_PREFIX": prefix,
        "WORKER_METRICS_PORT": str(worker_port),
        "WORKER_METRICS_HOST": "127.0.0.1",
        "METRICS_DIR": str(folder / "metrics"),
        "UPLOAD_RATE_LIMIT": f"{UPLOADS} per minute",
    }
    started: list[ChildProcess] = []
    try:
        worker = services.Workers(env, folder / "worker.log")
        started.append(worker)
        web = services.WebServer(env, folder / "web.log")
        started.append(web)
        worker.wait_ready()
        web.wait_ready()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(int(web.url.rsplit(":", 1)[1]), worker_port)))
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
        prometheus = ChildProcess(
            "prometheus", command, {"PATH": os.environ.get("PATH", "")}, folder / "prometheus.log"
        )
        started.append(prometheus)
        url = f"http://127.0.0.1:{prometheus_port}"
        prometheus.wait_until(lambda: http_status(f"{url}/-/ready") == 200, WAIT_SECONDS)
        yield Monitored(settings.replace(queue_prefix=prefix), url, web, worker)
    finally:
        for process in reversed(started):
            process.stop()
        scratch.delete_queues(settings.redis_url, prefix)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except OSError:
        return None


def producer(config: Settings, *args: str) -> str:
    """What the command printed, its messages (stderr) included."""
    result = CliRunner().invoke(producer_cli, list(args), obj=config)
    assert result.exit_code == 0, result.output
    return result.output


def run_job(
    monitored: Monitored, conn, *selection: str, while_queued: Callable[[], None] | None = None
) -> tuple[int, int, int]:
    """Submit a job of test images and wait for it: (its id, images, batches).

    ``while_queued`` runs with the job's batches all waiting in the queue: the bulk worker is
    paused from before the submit until it returns, so a fast machine cannot empty the queue
    between two scrapes (a whole job can take less than one here).
    """
    paused = bulk_worker_pids(monitored.worker) if while_queued else []
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        said = producer(monitored.settings, "submit", "--split", "test", "--batch-size", str(BATCH_SIZE), *selection)
        if while_queued:
            while_queued()
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    job_id, images, batches = map(int, re.search(r"job (\d+): (\d+) images in (\d+) batches", said).groups())
    outcome = services.wait_for_jobs(conn, [job_id], timeout=120)[job_id]
    assert outcome[0] == "done", outcome
    return job_id, images, batches


def bulk_worker_pids(worker: services.Workers) -> list[int]:
    """The bulk Celery worker's processes (its parent and pool) under ``python -m worker``, whose own
    process keeps running the exporter, so Prometheus still scrapes the worker while they are paused."""
    bulk = [pid for pid in child_pids(worker.pid) if b"worker.bulk" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return bulk + [child for pid in bulk for child in child_pids(pid)]


def test_prometheus_scrapes_the_web_and_every_process_of_the_worker(monitored):
    monitored.eventually('up{job="web"} == 1')
    monitored.eventually('up{job="worker"} == 1')
    assert monitored.eventually('sum(mnist_worker_processes{role="bulk_pool"}) == 1')  # WORKER_CONCURRENCY=1
    assert monitored.eventually('sum(mnist_worker_processes{role="upload_consumer"}) == 1')
    assert monitored.eventually("sum(celery_worker_up) == 1")
    for job in ("web", "worker"):  # both read the queues, so they stay visible without workers
        depths = monitored.eventually(f'mnist_queue_depth{{job="{job}"}}')
        assert {series["metric"]["queue"] for series in depths} == {"bulk", "upload"}
    assert monitored.eventually(f'celery_queue_length{{queue_name="{queues.broker.bulk_queue(monitored.settings)}"}}')


def test_a_job_shows_in_prometheus_as_images_per_second(monitored, conn, browser_or_none):
    producer(monitored.settings, "ingest", "mnist", "--split", "test")  # the bundled 10,000; a no-op where stored
    # A first small job makes the series by model version exist, so the big one is seen rising from it.
    _, _, first_batches = run_job(monitored, conn, "--limit", str(BATCH_SIZE))
    monitored.eventually('sum(mnist_images_predicted_total{queue="bulk"}) > 0')
    time.sleep(2 * SCRAPE_SECONDS)
    started = time.monotonic()

    def queue_seen() -> None:  # the worker's exporter reads the waiting batches from Redis at each scrape
        monitored.eventually('mnist_queue_depth{queue="bulk", job="worker"} > 0')
        monitored.eventually('mnist_queue_oldest_age_seconds{queue="bulk", job="worker"} > 0')

    job_id, images, job_batches = run_job(monitored, conn, while_queued=queue_seen)
    job_seconds = time.monotonic() - started

    rate = float(monitored.eventually(f"{IMAGES_PER_SECOND} > 0")[0]["value"][1])
    peak = monitored.value(f"max_over_time({GRAPHED.replace('by (queue) ', '')}[1m:1s])")
    print(
        f"job {job_id}: {images} images in {job_seconds:.1f} s;"
        f" Prometheus rate[30s] {rate:.0f}/s, peak rate[5s] {peak:.0f}/s"
    )
    assert monitored.eventually('max_over_time(mnist_queue_depth{queue="bulk", job="worker"}[1m]) > 0')
    assert monitored.eventually('max_over_time(mnist_queue_oldest_age_seconds{queue="bulk", job="worker"}[1m]) > 0')
    batches = first_batches + job_batches
    every_stage = f'sum by (stage) (mnist_batch_stage_seconds_count{{queue="bulk"}}) >= {batches}'
    assert monitored.eventually(f"count({every_stage}) == 4")  # queue_wait, fetch, inference, store
    assert {series["metric"]["stage"] for series in monitored.query(every_stage)} == {
        "queue_wait",
        "fetch",
        "inference",
        "store",
    }
    assert monitored.eventually(f'sum(mnist_batch_size_images_count{{queue="bulk"}}) >= {batches}')
    assert monitored.eventually(
        f'sum(celery_task_succeeded_total{{queue_name="{queues.broker.bulk_queue(monitored.settings)}"}}) >= {batches}'
    )
    assert monitored.eventually(f"sum(celery_task_runtime_count) >= {batches}")
    if browser_or_none is not None:
        monitored.eventually(f"{GRAPHED.replace('by (queue) ', '')} == 0")  # the job's curve has come down again
        save_dashboard_queries(browser_or_none, monitored.prometheus_url)


def test_uploads_show_their_latency_and_a_refusal(monitored):
    rng = np.random.default_rng(13)
    images, _ = digits.mnist_test_digits(UPLOADS + 1)
    answers = [post_upload(monitored.web.url, digits.render_on_paper(image, rng)) for image in images]
    assert [status for status, _ in answers] == [200] * UPLOADS + [429]
    assert all(body["status"] == "done" for _, body in answers[:UPLOADS])
    count = monitored.eventually(f"sum(mnist_upload_latency_seconds_count) >= {UPLOADS}")
    assert float(count[0]["value"][1]) >= UPLOADS
    assert monitored.eventually('sum(mnist_web_refusals_total{status="429", reason="upload_rate_limit"}) >= 1')
    assert monitored.eventually('sum(mnist_batch_stage_seconds_count{queue="upload", stage="queue_wait"}) >= 1')
    p50 = monitored.value("histogram_quantile(0.5, sum by (le) (mnist_upload_latency_seconds_bucket))")
    print(f"upload latency, accepted to stored, p50 (histogram bucket bound): {p50 * 1000:.1f} ms")


def post_upload(web_url: str, png: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{web_url}/api/predictions?wait=10", data=png, headers={"Content-Type": "image/png"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_dashboards_and_alerts_queries_run_on_prometheus(monitored):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 12
    empty = []
    for expression in expressions:  # a query Prometheus cannot parse fails here with its error
        if not monitored.query(expression.replace("$__rate_interval", "1m")):
            empty.append(expression)
    # After the job and the uploads above, throughput, depth, latency and processes all have data.
    for needed in (
        "mnist_images_predicted_total",
        "mnist_queue_depth",
        "mnist_upload_latency_seconds_bucket",
        "mnist_worker_processes",
    ):
        assert any(needed in expression for expression in expressions if expression not in empty), needed
    rules = [rule for group in monitored.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    deadline = time.monotonic() + WAIT_SECONDS
    while any(rule["health"] == "unknown" for rule in rules) and time.monotonic() < deadline:  # not evaluated yet
        time.sleep(SCRAPE_SECONDS)
        rules = [rule for group in monitored.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert {rule["name"]: rule["health"] for rule in rules} == {name: "ok" for name in alert_names()}
    firing = [rule["name"] for rule in rules if rule["state"] != "inactive"]
    assert firing == [], f"a healthy system raised {firing}"


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_the_compose_config_and_the_alerts_fire_when_they_should():
    promtool = need(PROMTOOL, "promtool")
    for command in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ):
        checked = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yml").read_text()), (
        "the alert tests test nothing"
    )


STAMP_ROUNDING = 0.001


def test_queue_depth_and_age_are_read_from_what_the_senders_put_in_redis(private_queue):
    """Real kombu messages and upload entries, on queues no worker consumes."""
    config = private_queue
    sent = queues.broker.send_batches(
        queues.broker.celery_app(config), queues.broker.bulk_queue(config), 1, [[1, 2], [3]]
    )
    queues.uploads.enqueue(config, 7, [70, 71], accepted=time.time() - 5)
    bulk, upload = read_queues(config, time.time() + 2)
    assert (bulk.queue, bulk.depth, upload.queue, upload.depth) == ("bulk", sent, "upload", 2)
    # Entries carry their time in milliseconds, rounded: an age may read up to half a millisecond short.
    assert bulk.oldest_age_seconds is not None and 2 - STAMP_ROUNDING <= bulk.oldest_age_seconds < 4
    assert upload.oldest_age_seconds is not None and 7 - STAMP_ROUNDING <= upload.oldest_age_seconds < 9
    empty = read_queues(config.replace(queue_prefix=scratch.unique_name("mnistq-empty")), time.time())
    assert [(reading.depth, reading.oldest_age_seconds) for reading in empty] == [(0, 0.0), (0, 0.0)]


@pytest.fixture(scope="module")
def browser_or_none():
    """Debian's Chromium for the screenshot, None without it (the metrics are checked all the same)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it")
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def pictured_queries() -> list[str]:
    """The dashboard's own queries of the pictured panels, with Grafana's rate interval filled in."""
    panels = {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}
    return [
        panels[title]["targets"][index]["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for title, index in PICTURED_PANELS.items()
    ]


def save_dashboard_queries(browser, prometheus_url: str) -> None:
    """Prometheus' own graph page (Debian ships its classic UI) of the pictured queries over the last seconds."""
    query: dict[str, str] = {}
    for number, expression in enumerate(pictured_queries()):
        query |= {f"g{number}.expr": expression, f"g{number}.tab": "0", f"g{number}.range_input": GRAPHED_RANGE}
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    every_graph_drawn = (
        "() => [...document.querySelectorAll('.graph_area')]"
        f".filter(area => area.querySelector('svg path')).length === {len(PICTURED_PANELS)}"
    )
    try:
        page.goto(f"{prometheus_url}/classic/graph?{urllib.parse.urlencode(query)}")
        page.wait_for_function(every_graph_drawn, timeout=15_000)
        page.wait_for_timeout(500)  # the legends and axes follow the lines
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / SCREENSHOT), full_page=True)
        pictures.save_for_docs(page, SCREENSHOT)
    finally:
        page.close()
    assert (ARTIFACTS / SCREENSHOT).stat().st_size > 10_000
    print(f"screenshot of the dashboard's queries in Prometheus: {ARTIFACTS / SCREENSHOT}")
