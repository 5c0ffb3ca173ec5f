"""The stack's command line, behind ``./run up | demo | down | status | env | psql``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import click

from shared.config import load_settings
from stack import embedded
from stack.demo import DemoResult, run_demo
from stack.processes import StackError, http_ok
from stack.state import StackState, load_state, pid_alive
from stack.supervisor import Stack, StackOptions, stop_leftovers

WATCH_SECONDS = 1.0
DOWN_WAIT_SECONDS = 120
NOT_RUNNING_EXIT = 3  # as `systemctl status` does for a stopped service
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """Raised in the main thread by SIGTERM or SIGHUP, so the stack stops as on Ctrl-C."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def stack_dir() -> Path:
    return load_settings().stack_dir


workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Worker processes (0: none) [default: WORKER_CONCURRENCY, else one per CPU].",
)


@click.group()
def main() -> None:
    """Run mnist-queue on this machine without Docker: PostgreSQL, Redis, workers and the web UI."""


@main.command()
@workers_option
@click.option("--no-web", is_flag=True, help="Do not start the web server.")
def up(workers: int | None, no_web: bool) -> None:
    """Start everything and keep it running until Ctrl-C (or ./run down)."""
    run_stack(workers, web=not no_web)


@main.command()
@workers_option
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N test images [default: all 10,000].")
def demo(workers: int | None, limit: int | None) -> None:
    """Start everything, predict the bundled MNIST test set, print accuracy and throughput, keep the web UI up."""
    run_stack(workers, web=True, demo=True, demo_limit=limit)


def run_stack(workers: int | None, web: bool, demo: bool = False, demo_limit: int | None = None) -> None:
    """Start, optionally run the demo, then wait for Ctrl-C or SIGTERM; always stop what was started."""
    config = load_settings()
    worker_count = workers if workers is not None else config.worker_processes()
    stack = Stack(StackOptions(config.stack_dir, worker_count, web, config.web_port))
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    started = time.monotonic()
    try:
        click.echo(f"starting the stack in {config.stack_dir} ...")
        state = stack.start()
        click.echo(f"stack ready in {time.monotonic() - started:.1f} s")
        describe(state, worker_count, stack.child_env())
        if demo:
            print_demo(run_demo(stack.child_env(), demo_limit), worker_count)
        click.echo(f"\nweb UI: {state.web_url}" if state.web_url else "")
        click.echo("press Ctrl-C to stop everything")
        watch(stack)
    except StackError as error:
        raise click.ClickException(str(error)) from None
    except subprocess.CalledProcessError as error:  # the producer printed its own error line
        raise click.ClickException(
            f"the demo step `{' '.join(error.cmd[1:])}` failed with status {error.returncode}"
        ) from None
    except (KeyboardInterrupt, StopRequested):
        click.echo("\nstopping ...")
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the shutdown short and leave processes behind
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
    click.echo("stopped")


def watch(stack: Stack) -> None:
    """Until interrupted: a worker or web server that exits is started again after a delay, as compose's
    ``restart: unless-stopped`` does (stack/restarts.py); Redis exiting, or a child that keeps exiting,
    stops the stack with the child's log (a StackError)."""
    while True:
        for event in stack.supervise(time.monotonic()):
            click.echo(event)
        next_restart = stack.seconds_to_next_restart(time.monotonic())
        time.sleep(WATCH_SECONDS if next_restart is None else min(WATCH_SECONDS, next_restart))


def describe(state: StackState, workers: int, stack_env: dict[str, str]) -> None:
    click.echo(f"  PostgreSQL  {'embedded' if state.embedded_postgres else 'external'}  {state.database_url}")
    click.echo(f"  Redis       {'embedded' if state.embedded_redis else 'external'}  {state.redis_url}")
    click.echo(f"  workers     {workers} process(es)")
    if state.web_url:
        click.echo(f"  web         {state.web_url}")
        public = load_settings(stack_env).public_insights
        click.echo(
            (
                "  operators   pages open to anyone who can reach 127.0.0.1"
                " (PUBLIC_INSIGHTS; set PUBLIC_INSIGHTS=0 to require sign-in)"
            )
            if public
            else "  operators   sign in for jobs and mistakes (python -m producer users add NAME)"
        )


def print_demo(result: DemoResult, workers: int) -> None:
    accuracy = f"{result.accuracy:.2%}" if result.accuracy is not None else "unknown"
    click.echo(f"\njob {result.job_id}: accuracy {accuracy} on {result.images} images")
    click.echo(
        f"throughput: {result.images} images in {result.seconds:.1f} s = {result.images_per_second:.0f} images/s"
        f" with {workers} worker process(es)"
    )
    click.echo(f'full report: eval "$(./run env)" && .venv/bin/python -m producer report {result.job_id}')


@main.command()
def down() -> None:
    """Stop the stack started by ./run up or ./run demo, from any terminal."""
    state = load_state(stack_dir())
    if state is not None and pid_alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_SECONDS
        while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(WATCH_SECONDS / 5)
    stop_leftovers(stack_dir())
    click.echo("stopped")


@main.command()
def status() -> None:
    """Show what runs and where; exit status 3 when nothing runs."""
    state = load_state(stack_dir())
    if state is None or not pid_alive(state.supervisor_pid):
        leftover = (
            " (a PostgreSQL is still running there: ./run down stops it)"
            if embedded.postgres_running(stack_dir())
            else ""
        )
        click.echo(f"no stack running from {stack_dir()}{leftover}")
        raise SystemExit(NOT_RUNNING_EXIT)
    click.echo(
        f"stack running from {stack_dir()} (pid {state.supervisor_pid}), {'ready' if state.ready else 'starting'}"
    )
    click.echo(f"  PostgreSQL  {state.database_url}")
    click.echo(f"  Redis       {state.redis_url}  {'up' if embedded.redis_answers(state.redis_url) else 'DOWN'}")
    for name in ("worker", "web"):
        pid = state.children.get(name)
        if pid is not None:
            click.echo(f"  {name:<11} pid {pid}  {'up' if pid_alive(pid) else 'DOWN'}")
    if state.web_url:
        click.echo(
            f"  web UI      {state.web_url}  {'healthy' if http_ok(state.web_url + '/healthz')() else 'not answering'}"
        )


def running_state() -> StackState:
    state = load_state(stack_dir())
    if state is None or not state.ready:
        raise click.ClickException("no stack is running; start one with ./run up")
    return state


@main.command()
def env() -> None:
    """Print the running stack's settings as shell exports: eval "$(./run env)"."""
    state = running_state()
    click.echo(f"export DATABASE_URL='{state.database_url}'")
    click.echo(f"export REDIS_URL='{state.redis_url}'")


@main.command()
def psql() -> None:
    """Open psql (shipped with embedded-postgres) on the running stack's database."""
    command = embedded.psql_command(running_state().database_url)
    os.execv(command[0], command)
