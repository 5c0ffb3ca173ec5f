"""The Docker path, run for real: the images built and the real docker-compose.yml brought up.

On a private ``dockerd`` (``tests/support/docker_engine.py``) unless ``DOCKER_HOST`` names a
running engine, with Compose v2 where its plugin is installed and Debian's docker-compose 1.29
otherwise. No image registry is needed: the base image is bootstrapped from Debian's packages and
passed to both Dockerfiles as ``PYTHON_IMAGE``; stand-ins for ``postgres`` and ``redis`` built on
it are selected through ``POSTGRES_IMAGE`` and ``REDIS_IMAGE`` (``tests/support/docker_images.py``).
The only addition to the compose file is an override that runs the two image builds on this
machine's network, where pip reaches the package index (the engine routes nothing out of its
bridges). Skipped only where no engine can be started, never in CI.

The tests run in order on one stack: up, a job of the whole test set, a job shared by three
worker containers, an upload through the published port, a worker container killed mid-job,
and ``down -v``. Step timings and the compose logs go to ``test-artifacts/containers/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from PIL import Image

from stack.processes import free_port
from tests.support import docker_images
from tests.support.digits import mnist_test_digits
from tests.support.docker_engine import Compose, Engine, EngineUnavailable, start_engine
from tests.support.services import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "containers"
TEST_IMAGES = 10_000
APP_UID = "10001"
HEALTHY_SECONDS = 240
JOB_SECONDS = 600
TASK_EVENT = re.compile(r"Task mnist_queue\.predict_batch\[([0-9a-f-]+)\] (received|succeeded|failed|retry)")
# A job's progress as stored, and what the database says about it: its predictions, the images of
# the job without one ("lost"; a second prediction of an image would break the primary key), failures.
JOB_COUNTS = """
SELECT j.status, j.total_images, j.done_count, j.failed_count,
       (SELECT count(*) FROM predictions p WHERE p.job_id = j.id),
       (SELECT count(DISTINCT p.input_data_id) FROM predictions p WHERE p.job_id = j.id),
       (SELECT count(*) FROM unnest(j.image_ids) AS wanted(id)
         WHERE NOT EXISTS (SELECT FROM predictions p WHERE p.job_id = j.id AND p.input_data_id = wanted.id)),
       (SELECT count(*) FROM job_failures f WHERE f.job_id = j.id)
  FROM jobs j WHERE j.id = :'job_id'
"""
# worker/failover.py's warning when a batch a dead worker held arrives again, given back by kombu.
FAILOVER_RESTORED = r"a batch of job \d+ is delivered again"
# Containers' settings, as a user would put them in .env; short stall times so that work Redis lost
# is re-enqueued in seconds (the default, 120 s, is for real deployments; a killed container's
# batches come back sooner, through failover).
SETTINGS = {"POSTGRES_USER": "mnist", "POSTGRES_DB": "mnist", "STALL_SECONDS": "10", "SWEEP_INTERVAL_SECONDS": "2"}
BUILD_ON_HOST_NETWORK = """\
# Written by tests/integration/test_containers.py: pip in the two builds reaches the package index
# through this machine's network; the private engine gives its bridges no route out.
services:
  worker:
    build:
      network: host
  web:
    build:
      network: host
  tools:
    build:
      network: host
"""


@dataclass
class Stack:
    compose: Compose
    web_url: str
    timings: dict[str, float] = field(default_factory=dict)
    down: bool = False
    notes: list[str] = field(default_factory=list)

    def save_logs(self) -> None:
        if self.down:
            return
        logs = self.compose("logs", "--no-color", "--timestamps", check=False, timeout=120).stdout
        if logs.strip():
            (ARTIFACTS / "compose.log").write_text(logs)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[step] = round(time.monotonic() - started, 1)

    def sql(self, query: str, **variables: object) -> str:
        """Rows (``|``-separated) from the db container's psql, as the superuser; ``:'name'`` quotes a variable."""
        settings = [part for name, value in variables.items() for part in ("-v", f"{name}={value}")]
        psql = ["psql", "-U", "mnist", "-d", "mnist", "-tAq", "-v", "ON_ERROR_STOP=1", *settings]
        return self.compose("exec", "-T", "db", *psql, input=query).stdout.strip()

    def producer(self, *args: str, timeout: float = JOB_SECONDS) -> str:
        """``compose run --rm tools python -m producer ...`` (the operators' tools, as the app role): its output."""
        return self.compose("run", "--rm", "-T", "tools", "python", "-m", "producer", *args, timeout=timeout).stdout

    def submit(self, *args: str) -> int:
        return int(self.producer("submit", "--split", "test", *args).split()[-1])

    def job(self, job_id: int) -> dict[str, int | str]:
        row = self.sql(JOB_COUNTS, job_id=job_id)
        status, *numbers = row.split("|")
        keys = ("total", "done", "failed", "predictions", "distinct_images", "lost", "failures")
        return {"status": status, **dict(zip(keys, map(int, numbers), strict=True))}

    def tasks(self) -> dict[str, dict[str, set[str]]]:
        """Per worker container, from its log: the ids of the bulk tasks it received and finished."""
        seen: dict[str, dict[str, set[str]]] = {}
        for container in self.compose.container_ids("worker"):
            logged = self.compose.engine.docker("logs", container)
            events: dict[str, set[str]] = {"received": set(), "finished": set()}
            for task_id, event in TASK_EVENT.findall(logged.stdout + logged.stderr):
                events["received" if event == "received" else "finished"].add(task_id)
            seen[container] = events
        return seen


def health(engine: Engine, container: str) -> str:
    template = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    return engine.docker("inspect", "--format", template, container).stdout.strip()


def wait_healthy(compose: Compose, replicas: dict[str, int]) -> dict[str, list[str]]:
    """Waits until each service has its number of containers, all healthy; {service: health states}."""
    deadline = time.monotonic() + HEALTHY_SECONDS
    while True:
        states = {service: [health(compose.engine, c) for c in compose.container_ids(service)] for service in replicas}
        if all(len(states[s]) == n and set(states[s]) == {"healthy"} for s, n in replicas.items()):
            return states
        if time.monotonic() > deadline:
            logs = compose("logs", "--no-color", "--tail", "60", check=False).stdout
            raise AssertionError(f"not every service became healthy in {HEALTHY_SECONDS} s: {states}\n{logs}")
        time.sleep(2)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    try:
        engine = start_engine()
    except EngineUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container test, but no Docker engine: {error}")
        pytest.skip(f"no Docker engine: {error}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("containers")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timings: dict[str, float] = {}
    base_started = time.monotonic()
    base = docker_images.base_image(engine, work)
    postgres = docker_images.standin_image(engine, "postgres", base)
    redis = docker_images.standin_image(engine, "redis", base)
    timings["base and stand-in images"] = round(time.monotonic() - base_started, 1)

    port = free_port()
    values = {
        name: secrets.token_urlsafe(24)
        for name in (
            "POSTGRES_PASSWORD",
            "SECRET_KEY",
            "MNIST_OWNER_PASSWORD",
            "MNIST_APP_PASSWORD",
            "MNIST_WEB_PASSWORD",
            "MNIST_WORKER_PASSWORD",
        )
    }
    values |= {**SETTINGS, "PYTHON_IMAGE": base, "POSTGRES_IMAGE": postgres, "REDIS_IMAGE": redis}
    values["WEB_PORT"] = f"127.0.0.1:{port}"  # "${WEB_PORT}:8000": published on loopback only
    env_file = work / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    override = work / "build-on-host-network.yml"
    override.write_text(BUILD_ON_HOST_NETWORK)
    compose = Compose(engine, f"mnistqct{os.getpid()}", [PROJECT_ROOT / "docker-compose.yml", override], env_file)
    stack = Stack(compose, f"http://127.0.0.1:{port}", timings)
    try:
        with stack.timed("up -d --build, all healthy"):
            compose("up", "-d", "--build", timeout=1800)
            wait_healthy(compose, {"db": 1, "redis": 1, "worker": 1, "web": 1})
        yield stack
    finally:
        stack.save_logs()
        compose("down", "--volumes", "--remove-orphans", check=False)
        timings["whole container test"] = round(time.monotonic() - started, 1)
        summary = {"compose": compose.command,
                   "compose_version": compose("version", "--short", check=False).stdout.strip(),
                   "engine": engine.host, "cache": str(docker_images.cache_dir()),
                   "seconds": timings, "notes": stack.notes}  # fmt: skip
        (ARTIFACTS / "timings.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\ncontainer test timings: {json.dumps(summary)}")


def test_every_service_is_healthy_and_the_apps_run_as_uid_10001(stack: Stack):
    compose, engine = stack.compose, stack.compose.engine
    for service in ("worker", "web"):
        (container,) = compose.container_ids(service)
        assert engine.docker("inspect", "--format", "{{.Config.User}}", container).stdout.strip() == APP_UID
        assert engine.docker("exec", container, "id", "-u").stdout.strip() == APP_UID
        status = engine.docker("exec", container, "cat", "/proc/1/status").stdout
        assert f"Uid:\t{APP_UID}\t" in status, f"{service}'s main process is not uid {APP_UID}"
    # The web serves from python -m web.serve: its main process and WEB_CONCURRENCY (2) processes below it.
    (web,) = compose.container_ids("web")
    count = (
        "import pathlib; print(sum(b'-m\\0web.serve\\0' in p.read_bytes()"
        " for p in pathlib.Path('/proc').glob('[0-9]*/cmdline')))"
    )
    assert engine.docker("exec", web, "python", "-c", count).stdout.strip() == "3"
    assert b"web.serve" in engine.docker("exec", web, "cat", "/proc/1/cmdline").stdout.encode()
    with urllib.request.urlopen(f"{stack.web_url}/readyz", timeout=10) as response:
        assert json.load(response) == {"status": "ready"}


def test_the_producer_in_the_worker_image_predicts_the_test_set(stack: Stack):
    with stack.timed("ingest, submit, status --wait (10,000)"):
        stack.producer("ingest", "mnist", "--split", "test")
        job_id = stack.submit()
        out = stack.producer("status", str(job_id), "--wait", "--timeout", str(JOB_SECONDS))
    assert f"job {job_id}: done, {TEST_IMAGES} predicted, 0 failed of {TEST_IMAGES}" in out
    assert stack.job(job_id) == {
        "status": "done",
        "total": TEST_IMAGES,
        "done": TEST_IMAGES,
        "failed": 0,
        # fmt: skip
        "predictions": TEST_IMAGES,
        "distinct_images": TEST_IMAGES,
        "lost": 0,
        "failures": 0,
    }


def test_three_worker_containers_share_a_job(stack: Stack):
    with stack.timed("up -d --scale worker=3, all healthy"):
        stack.compose("up", "-d", "--scale", "worker=3")
        wait_healthy(stack.compose, {"db": 1, "redis": 1, "worker": 3, "web": 1})
    before = stack.tasks()
    with stack.timed("a job in 40 batches on three workers"):
        job_id = stack.submit("--batch-size", "250")
        stack.producer("status", str(job_id), "--wait", "--timeout", str(JOB_SECONDS))
    taken = {c[:12]: len(t["received"] - before.get(c, {}).get("received", set())) for c, t in stack.tasks().items()}
    assert len(taken) == 3 and all(count > 0 for count in taken.values()), (
        f"batches received per worker container: {taken}"
    )
    assert stack.job(job_id)["predictions"] == TEST_IMAGES


def test_an_upload_through_the_published_port_is_answered_with_a_label(stack: Stack):
    images, labels = mnist_test_digits(1)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    request = urllib.request.Request(
        f"{stack.web_url}/api/predictions?wait=10",
        data=buffer.getvalue(),
        headers={"Content-Type": "image/png"},
        method="POST",
    )
    with stack.timed("an upload answered"), urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "done", body
    assert body["label"] == int(labels[0]), body


def test_a_worker_container_killed_mid_job_loses_and_duplicates_nothing(stack: Stack):
    """SIGKILL to a whole worker container, pool and all, while it holds batches it will never ack.

    Its batches come back through the failover of the containers left (worker/failover.py: within
    WORKER_DEAD_AFTER_SECONDS, 5 s, of its last refresh, before the sweeper's STALL_SECONDS): the
    test retries until a kill caught batches unacknowledged (a survivor says it gave them back),
    and every job in between must end as complete as that one.
    """
    engine = stack.compose.engine
    for attempt in range(3):
        if attempt:  # three workers again: the container killed last time stays down (docker kill is a stop)
            stack.compose("up", "-d", "--scale", "worker=3")
            wait_healthy(stack.compose, {"db": 1, "redis": 1, "worker": 3, "web": 1})
        job_id = stack.submit("--batch-size", "10")  # 1,000 batches: some seconds of work for three containers
        deadline = time.monotonic() + JOB_SECONDS
        while (progress := stack.job(job_id))["done"] < 500:
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        victim = stack.compose.running("worker")[0]
        engine.docker("kill", victim)
        killed_at = time.monotonic()
        assert progress["status"] != "done", "the job ended before a worker could be killed"
        stack.producer("status", str(job_id), "--wait", "--timeout", str(JOB_SECONDS))
        done_after = time.monotonic() - killed_at
        assert stack.job(job_id) == {"status": "done", "total": TEST_IMAGES, "done": TEST_IMAGES, "failed": 0,
                                     "predictions": TEST_IMAGES, "distinct_images": TEST_IMAGES,
                                     "lost": 0, "failures": 0}  # fmt: skip
        worker_logs = stack.compose("logs", "--no-color", "worker").stdout
        resumed = len(re.findall(FAILOVER_RESTORED, worker_logs))
        restarts = engine.docker("inspect", "--format", "{{.RestartCount}}", victim).stdout.strip()
        stack.notes.append(
            f"job {job_id}: killed {victim[:12]} at {progress['done']} done; done {done_after:.1f} s later; "
            # fmt: skip
            f"failover gave back {resumed} batches; the container restarted {restarts} times"
        )
        if resumed:
            break
    assert resumed, f"no kill caught a batch unacknowledged: {stack.notes}"
    stack.timings["job done, after the kill of a worker container holding unstored batches"] = round(done_after, 1)


def test_down_v_leaves_no_container_network_or_volume(stack: Stack):
    compose = stack.compose
    assert compose.resources("container") and compose.resources("volume")
    stack.save_logs()
    with stack.timed("down -v"):
        compose("down", "--volumes")
    stack.down = True
    assert {kind: compose.resources(kind) for kind in ("container", "network", "volume")} == {
        "container": [],
        "network": [],
        "volume": [],
    }
