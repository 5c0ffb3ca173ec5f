"""Child processes, each in its own session and logging to a file; free loopback ports.

Used by the stack (``./run up``), the benchmarks and the tests, which all start real
services this way. Their own session keeps a Ctrl-C in the terminal from reaching them
directly, so the supervisor can stop them in order (web, workers, Redis, PostgreSQL)
and wait for each; ``stop`` ends the whole process group, children included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from shared.config import PROJECT_ROOT
from stack.state import pid_alive

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 30
LOG_TAIL_CHARS = 3000


class StackError(RuntimeError):
    """A service would not start or stop; the message says why and where its log is."""


class ChildProcess:
    """A started command with its log file; ``stop`` ends its whole process group."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it holds; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise StackError(
                    f"{self.name} exited with status {self.process.returncode}; log {self.log_path}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(POLL_SECONDS)
        raise StackError(f"{self.name} was not ready after {timeout:g} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        stop_process_group(self.pid, timeout)
        self.process.wait()  # reap it


def stop_process_group(pid: int, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM the group led by ``pid`` (graceful for Celery, the web server and Redis), SIGKILL after ``timeout``."""
    if not signal_group(pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if pid_alive(pid):
        signal_group(pid, signal.SIGKILL)


def signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the process group of ``pid``; False if it is already gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on loopback (same URL as last time), else any free port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as servers do, so connections of a just-stopped server in TIME_WAIT do not count as "in use"
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                probe.bind((LOOPBACK, candidate))
                return probe.getsockname()[1]
    raise StackError("no free port on loopback")


def log_contains(path: Path, marker: bytes, after: int = 0) -> Callable[[], bool]:
    """A readiness probe: ``marker`` is in the log, past its first ``after`` bytes (what earlier starts wrote)."""

    def probe() -> bool:
        if not path.exists():
            return False
        with open(path, "rb") as log:
            log.seek(after)
            return marker in log.read()

    return probe


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: the URL answers 2xx."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    return probe
