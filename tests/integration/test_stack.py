"""The local stack without Docker: embedded PostgreSQL and Redis in a private folder, real
workers, started and stopped through ``python -m stack`` as ``./run up`` / ``./run down`` do;
and on the machine's services, a worker and web server killed under it and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis

from shared import jobs
from shared.db import connection
from shared.images.codec import png_bytes
from stack import embedded, scratch
from stack.demo import run_demo
from stack.processes import free_port, http_ok
from stack.restarts import CRASH_LIMIT, CRASH_WINDOW_SECONDS
from stack.state import StackState, load_state, pid_alive
from tests.support.digits import mnist_test_digits
from tests.support.services import PROJECT_ROOT

STACK_START_SECONDS = 180
MARKER_KEY = "stack-test-marker"
IMAGES = 500
RESTART_SECONDS = 30  # the longest delay before a restart is 4 s; a worker then needs a few seconds to start
JOB_IMAGES = 200  # after the restarts: the new worker predicts a job


def stack_env(stack_dir: Path) -> dict[str, str]:
    """No DATABASE_URL or REDIS_URL: the stack must start its own services."""
    env = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URL", "REDIS_URL"}}
    return {**env, "STACK_DIR": str(stack_dir)}


def run_stack_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180
    )


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
            [sys.executable, "-m", "stack", "up", *up_args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
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
        upload = urllib.request.Request(
            f"{state.web_url}/api/predictions?wait=10", data=picture, headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(upload, timeout=30) as answer:
            assert answer.status == 200 and json.load(answer)["label"] == labels[0]
        redis.Redis.from_url(state.redis_url).set(MARKER_KEY, "kept")

    with running_stack({**env, "WEB_PORT": ""}, "--no-web", "--workers", "0") as state:
        with contextlib.closing(connection.connect(state.database_url)) as conn:
            assert jobs.store.rows_for_job(conn, result.job_id) == (IMAGES, IMAGES, 0)
            assert jobs.store.get_job(conn, result.job_id)["status"] == "done"
        assert redis.Redis.from_url(state.redis_url).get(MARKER_KEY) == b"kept"
        psql = subprocess.run(
            embedded.psql_command(state.database_url),
            input="SELECT count(*) FROM input_data;",
            capture_output=True,
            text=True,
        )
        assert psql.returncode == 0 and f" {IMAGES + 1}\n" in psql.stdout  # the demo's images and the upload


def wait_for_restart(stack_dir: Path, name: str, old_pid: int) -> int:
    """The pid of ``name`` started after ``old_pid`` exited, once the state file records it running."""
    deadline = time.monotonic() + RESTART_SECONDS
    while time.monotonic() < deadline:
        state = load_state(stack_dir)
        pid = state.children.get(name) if state is not None else None
        if pid is not None and pid != old_pid and pid_alive(pid):
            return pid
        time.sleep(0.1)
    raise AssertionError(f"{name} was not restarted within {RESTART_SECONDS} s; state: {load_state(stack_dir)}")


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; a zombie waiting for its parent to reap it does not."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_stack_restarts_a_killed_worker_and_web_then_gives_up_on_a_worker_that_keeps_exiting(tmp_path):
    """SIGKILL of the worker's and the web's whole process groups: both come back (recorded in the state
    file, for ./run down), and a job is predicted; killed again at each restart, the worker's fifth exit
    within a minute stops the stack with an error naming it and its log, and nothing is left running."""
    stack_dir = tmp_path / "stack"
    with scratch.database_with_schema(scratch.unique_name("mnistq_stack")) as database_url:
        env = {
            **os.environ,
            "STACK_DIR": str(stack_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": os.environ["REDIS_URL"],
            "QUEUE_PREFIX": scratch.unique_name("mnistq-stack"),
            "WEB_PORT": str(free_port()),
        }
        log_path = tmp_path / "up.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "stack", "up", "--workers", "1"],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            first = wait_until_ready(process, stack_dir, log_path)
            started = time.monotonic()
            for name in ("worker", "web"):
                os.killpg(first.children[name], signal.SIGKILL)
            pids = {name: wait_for_restart(stack_dir, name, first.children[name]) for name in ("worker", "web")}
            for name, pid in pids.items():  # the state file names the process that runs, which ./run down stops
                assert (
                    f"-m\0{name if name == 'worker' else 'web.serve'}".encode()
                    in Path(f"/proc/{pid}/cmdline").read_bytes()
                )
            deadline = time.monotonic() + RESTART_SECONDS
            while not http_ok(f"{first.web_url}/healthz")():
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            result = run_demo(env, limit=JOB_IMAGES)
            assert (result.images, result.accuracy is not None) == (JOB_IMAGES, True)

            seen = [first.children["worker"], first.children["web"], *pids.values()]
            pid = pids["worker"]
            for _ in range(CRASH_LIMIT - 2):  # exits 2 to 4: each followed by a restart
                os.killpg(pid, signal.SIGKILL)
                pid = wait_for_restart(stack_dir, "worker", pid)
                seen.append(pid)
            os.killpg(pid, signal.SIGKILL)  # the fifth exit
            process.wait(timeout=RESTART_SECONDS)
            assert time.monotonic() - started < CRASH_WINDOW_SECONDS
        finally:
            if process.poll() is None:
                run_stack_command(env, "down")
                process.wait(timeout=60)
        output = log_path.read_text()
        assert process.returncode == 1, output
        for delay in ("0.5", "1", "2", "4"):
            assert f"worker was killed by SIGKILL; restarting in {delay} s" in output
        assert "web was killed by SIGKILL; restarting in 0.5 s" in output
        expected = (
            f"Error: worker exited {CRASH_LIMIT} times within {CRASH_WINDOW_SECONDS:g} s,"
            " the last time it was killed by SIGKILL;"
        )
        assert f"{expected} giving up; log {stack_dir / 'logs' / 'worker.log'}" in output
        assert load_state(stack_dir) is None
        assert not any(group_alive(pgid) for pgid in seen)
