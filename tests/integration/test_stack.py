"""The local stack without Docker: embedded PostgreSQL and Redis in a private folder, real
workers, started and stopped through ``python -m stack`` as ``./run up`` / ``./run down`` do.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis

from shared.db import connection
from shared.db import jobs as job_store
from shared.images import png_bytes
from stack import embedded
from stack.demo import run_demo
from stack.processes import free_port, http_ok
from stack.state import StackState, load_state, pid_alive
from tests.support.digits import mnist_test_digits
from tests.support.services import PROJECT_ROOT

STACK_START_SECONDS = 180
MARKER_KEY = "stack-test-marker"
IMAGES = 500


def stack_env(stack_dir: Path) -> dict[str, str]:
    """No DATABASE_URL or REDIS_URL: the stack must start its own services."""
    env = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URL", "REDIS_URL"}}
    return {**env, "STACK_DIR": str(stack_dir)}


def run_stack_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)


def wait_until_ready(process: subprocess.Popen, stack_dir: Path, log_path: Path) -> StackState:
    deadline = time.monotonic() + STACK_START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the stack exited with {process.returncode}:\n{log_path.read_text()}"
        state = load_state(stack_dir)
        if state is not None and state.ready:
            return state
        time.sleep(0.2)
    raise AssertionError(f"the stack was not ready after {STACK_START_SECONDS} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def running_stack(env: dict[str, str], *up_args: str) -> Iterator[StackState]:
    """``python -m stack up`` in the background until ``python -m stack down``; checks nothing is left running."""
    stack_dir = Path(env["STACK_DIR"])
    log_path = stack_dir.parent / f"up-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stack", "up", *up_args], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        state = wait_until_ready(process, stack_dir, log_path)
        yield state
    finally:
        down = run_stack_command(env, "down")
        process.wait(timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert process.returncode == 0, log_path.read_text()
    assert not embedded.postgres_running(stack_dir)
    assert not any(pid_alive(pid) for pid in state.children.values())
    assert run_stack_command(env, "status").returncode == 3


def test_embedded_stack_predicts_and_keeps_its_data_across_a_restart(tmp_path):
    env = {**stack_env(tmp_path / "stack"), "WEB_PORT": str(free_port())}
    with running_stack(env, "--workers", "1") as state:
        assert state.embedded_postgres and state.embedded_redis
        assert state.web_url == f"http://127.0.0.1:{env['WEB_PORT']}" and http_ok(f"{state.web_url}/readyz")()
        assert f"host={tmp_path}" in state.database_url and state.redis_url.startswith("redis://127.0.0.1:")
        again = run_stack_command(env, "up", "--no-web")
        assert again.returncode == 1 and "already running" in again.stderr

        result = run_demo({**env, "DATABASE_URL": state.database_url, "REDIS_URL": state.redis_url}, limit=IMAGES)
        assert result.images == IMAGES and result.accuracy >= 0.98 and result.seconds > 0
        digits, labels = mnist_test_digits(1)  # an upload takes the stack's upload consumer
        picture = png_bytes(digits[0])
        upload = urllib.request.Request(f"{state.web_url}/api/predictions?wait=10", data=picture, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(upload, timeout=30) as answer:
            assert answer.status == 200 and json.load(answer)["label"] == labels[0]
        redis.Redis.from_url(state.redis_url).set(MARKER_KEY, "kept")

    with running_stack({**env, "WEB_PORT": ""}, "--no-web", "--workers", "0") as state:
        with contextlib.closing(connection.connect(state.database_url)) as conn:
            assert job_store.rows_for_job(conn, result.job_id) == (IMAGES, IMAGES, 0)
            assert job_store.get_job(conn, result.job_id)["status"] == "done"
        assert redis.Redis.from_url(state.redis_url).get(MARKER_KEY) == b"kept"
        psql = subprocess.run(
            embedded.psql_command(state.database_url), input="SELECT count(*) FROM input_data;", capture_output=True, text=True
        )
        assert psql.returncode == 0 and f" {IMAGES + 1}\n" in psql.stdout  # the demo's images and the upload
