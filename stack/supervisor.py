"""Start the stack in order, stop it in reverse: PostgreSQL, Redis, schema, workers, web.

Everything started is recorded in the state file as soon as it runs, so a failed start,
a Ctrl-C, ``./run down`` from another terminal, or even a killed supervisor followed by
``./run down`` leaves nothing running. While the stack runs, ``supervise`` starts a worker or
web server that exited on its own again (stack/restarts.py), and records the new process too.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

from shared.config import PROJECT_ROOT, load_settings, local_stack_defaults, service_urls_from_environment
from shared.db import connection
from shared.training import registration
from stack import embedded
from stack.processes import (
    LOOPBACK,
    STOP_TIMEOUT_SECONDS,
    ChildProcess,
    StackError,
    free_port,
    http_ok,
    log_contains,
    signal_group,
    stop_process_group,
)
from stack.restarts import CRASH_LIMIT, CRASH_WINDOW_SECONDS, Restarts, describe_exit
from stack.state import StackState, clear_state, load_state, pid_alive, save_state
from web import serve

SCHEMA_WAIT_SECONDS = 30
WORKER_READY_SECONDS = 120
WORKER_STOP_SECONDS = 60  # a warm shutdown finishes the batches in hand
WEB_READY_SECONDS = 60
# The order in which children are stopped: nothing is left sending work to a stopped service.
STOP_ORDER = ("web", "worker", "redis")
# Started again when they exit on their own. Not the embedded Redis: the workers and the web hold
# its URL, so the stack stops when it does (an external Redis or PostgreSQL is not ours to restart).
RESTARTED = ("worker", "web")


@dataclasses.dataclass(frozen=True)
class StackOptions:
    stack_dir: Path
    workers: int  # worker processes; 0 starts none
    web: bool
    web_port: int


class AlreadyRunning(StackError):
    pass


class GaveUp(StackError):
    """A child kept exiting: CRASH_LIMIT times within CRASH_WINDOW_SECONDS."""


class Stack:
    """The processes of one stack, started by this process."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.children: dict[str, ChildProcess] = {}
        self.state: StackState | None = None
        self.restarts = {name: Restarts() for name in RESTARTED}
        self.restart_due: dict[str, float] = {}  # name -> monotonic time of its next start

    def start(self) -> StackState:
        """Start everything that is not already given by DATABASE_URL / REDIS_URL; undo all on failure."""
        refuse_if_running(self.options.stack_dir)
        database_url, redis_url = service_urls_from_environment()
        self.options.stack_dir.mkdir(parents=True, exist_ok=True)
        self.state = StackState(
            os.getpid(), database_url or "", redis_url or "", database_url is None, redis_url is None
        )
        save_state(self.options.stack_dir, self.state)
        try:
            self._start_services()
            if self.options.workers:
                self._start_worker()
            if self.options.web:
                self._start_web()
        except BaseException:
            self.stop()
            raise
        self.state.ready = True
        save_state(self.options.stack_dir, self.state)
        return self.state

    def _start_services(self) -> None:
        assert self.state is not None
        if self.state.embedded_postgres:
            self.state.database_url = embedded.start_postgres(self.options.stack_dir)
            save_state(self.options.stack_dir, self.state)
        if self.state.embedded_redis:
            process, self.state.redis_url = embedded.start_redis(self.options.stack_dir)
            self._record("redis", process)
        connection.wait_for_database(self.state.database_url, SCHEMA_WAIT_SECONDS).close()
        settings = load_settings()  # MODEL_PATH and MNIST_DIR as the children read them
        try:  # the schema, then the bundled model registered (production when no model is), as init-db does
            registration.prepare_database(self.state.database_url, settings.model_path, settings.mnist_dir)
        except ValueError as error:
            raise StackError(f"the bundled model cannot be registered: {error}") from None

    def _start_worker(self) -> None:
        log_path = self.log_path("worker")
        earlier_log = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to across starts
        process = self._launch("worker")
        process.wait_until(log_contains(log_path, b" ready.", after=earlier_log), WORKER_READY_SECONDS)

    def _start_web(self) -> None:
        assert self.state is not None
        port = self.options.web_port
        if free_port(port) != port:
            raise StackError(f"port {port} is in use; set WEB_PORT to a free port")
        self.state.web_url = f"http://{LOOPBACK}:{port}"
        process = self._launch("web")
        process.wait_until(http_ok(f"{self.state.web_url}/healthz"), WEB_READY_SECONDS)

    def _launch(self, name: str) -> ChildProcess:
        """Start the worker or the web server (again), recorded in the state file at once."""
        if name == "worker":
            command = [sys.executable, "-m", "worker", "--without-gossip", "--without-mingle"]
            # Its metrics exporter on loopback too, like the web, unless the user says otherwise.
            env = {"WORKER_METRICS_HOST": LOOPBACK, **self.child_env()}
        else:
            command = serve.command(f"{LOOPBACK}:{self.options.web_port}")  # as the web image runs it
            env = self.child_env()
        process = ChildProcess(name, command, env, self.log_path(name), PROJECT_ROOT)
        self._record(name, process)
        return process

    def log_path(self, name: str) -> Path:
        return self.options.stack_dir / "logs" / f"{name}.log"

    def _record(self, name: str, process: ChildProcess) -> None:
        assert self.state is not None
        self.children[name] = process
        self.state.children[name] = process.pid
        save_state(self.options.stack_dir, self.state)

    def child_env(self) -> dict[str, str]:
        """Our environment with the stack's URLs: workers, web and producer all see the same services.

        With the local stack's defaults for what the user left unset: the operator pages are open
        (PUBLIC_INSIGHTS=demo), since the web listens on 127.0.0.1 only.
        """
        assert self.state is not None
        env = {
            **os.environ,
            **local_stack_defaults(),
            "DATABASE_URL": self.state.database_url,
            "REDIS_URL": self.state.redis_url,
        }
        if self.options.workers:
            env["WORKER_CONCURRENCY"] = str(self.options.workers)
        return env

    def supervise(self, now: float) -> list[str]:
        """Notice children that exited, start them again once their delay is over; returns what happened.

        Raises StackError, naming the child and its log, when Redis exited or a child kept exiting.
        """
        events = [self._exited(name, child, now) for name, child in list(self.children.items()) if not child.running()]
        for name, due in list(self.restart_due.items()):
            if now >= due:
                del self.restart_due[name]
                events.append(f"{name} restarted (pid {self._launch(name).pid})")
        return events

    def seconds_to_next_restart(self, now: float) -> float | None:
        return max(0.0, min(self.restart_due.values()) - now) if self.restart_due else None

    def _exited(self, name: str, child: ChildProcess, now: float) -> str:
        assert self.state is not None
        how = describe_exit(child.process.returncode)
        log = f"log {child.log_path}:\n{child.log_tail()}"
        if name not in RESTARTED:
            raise StackError(f"{name} stopped unexpectedly: it {how}; {log}")
        # As when a container ends: whatever it left behind goes too (pool processes of a killed worker).
        signal_group(child.pid, signal.SIGKILL)
        del self.children[name]
        del self.state.children[name]
        save_state(self.options.stack_dir, self.state)
        delay = self.restarts[name].delay_after_exit(now)
        if delay is None:
            raise GaveUp(
                f"{name} exited {CRASH_LIMIT} times within {CRASH_WINDOW_SECONDS:g} s,"
                f" the last time it {how}; giving up; {log}"
            )
        self.restart_due[name] = now + delay
        return f"{name} {how}; restarting in {delay:g} s"

    def stop(self) -> None:
        """Stop children in order, then the embedded PostgreSQL; forget the state. A no-op if never started."""
        if self.state is None:
            return  # e.g. start() refused: the state file belongs to another stack
        for name in STOP_ORDER:
            child = self.children.pop(name, None)
            if child is not None:
                child.stop(WORKER_STOP_SECONDS if name == "worker" else STOP_TIMEOUT_SECONDS)
        if self.state.embedded_postgres:
            embedded.stop_postgres(self.options.stack_dir)
        clear_state(self.options.stack_dir)
        self.state = None


def refuse_if_running(stack_dir: Path) -> None:
    state = load_state(stack_dir)
    if state is not None and pid_alive(state.supervisor_pid):
        raise AlreadyRunning(
            f"a stack is already running from {stack_dir} (pid {state.supervisor_pid}); stop it with ./run down"
        )
    if state is not None or embedded.postgres_running(stack_dir):
        stop_leftovers(stack_dir)  # a supervisor that was killed left these behind


def stop_leftovers(stack_dir: Path) -> None:
    """Stop what a dead supervisor recorded, and a PostgreSQL still running on our data folder."""
    state = load_state(stack_dir)
    if state is not None:
        for name in STOP_ORDER:
            pid = state.children.get(name)
            if pid is not None:
                stop_process_group(pid, WORKER_STOP_SECONDS)
    embedded.stop_postgres(stack_dir)
    clear_state(stack_dir)
