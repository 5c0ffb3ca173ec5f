"""Every launcher of the web runs gthread workers of 8 threads: the setting is in web/gunicorn_config.py,
which the web image, Kubernetes, ``./run up``, the tests and bench all name, and gunicorn's own flags
and GUNICORN_CMD_ARGS still override it. Read by gunicorn's own configuration loader, nothing started."""

from __future__ import annotations

import json
import re
import sys

import pytest
from gunicorn.app.wsgiapp import WSGIApplication

from bench import burst
from bench.common import gunicorn_command
from shared.config import PROJECT_ROOT
from stack.supervisor import WEB_CONFIG


def web_image_command() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", (PROJECT_ROOT / "Dockerfile.web").read_text(), re.MULTILINE).group(1))


def workers_of(monkeypatch: pytest.MonkeyPatch, argv: list[str], cmd_args: str | None = None) -> tuple[str, int]:
    """(worker class, threads) gunicorn would run for ``argv``."""
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    if cmd_args is not None:
        monkeypatch.setenv("GUNICORN_CMD_ARGS", cmd_args)
    monkeypatch.setattr(sys, "argv", argv)
    config = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    return config.worker_class_str, config.threads


def test_the_web_image_runs_gthread_workers_of_8_threads(monkeypatch):
    command = web_image_command()
    assert command[command.index("--config") + 1] == WEB_CONFIG  # ./run up's (stack/supervisor.py)
    assert workers_of(monkeypatch, command) == ("gthread", 8)


def test_gunicorns_flags_and_environment_override_the_config_file(monkeypatch):
    command = web_image_command()
    app = command[-1]
    assert workers_of(monkeypatch, [*command[:-1], "--threads", "4", app]) == ("gthread", 4)
    assert workers_of(monkeypatch, command, cmd_args="--threads 3") == ("gthread", 3)
    assert workers_of(monkeypatch, [*command[:-1], "--worker-class", "sync", "--threads", "1", app]) == ("sync", 1)


def test_bench_runs_the_users_settings_and_its_web_option_still_decides(monkeypatch):
    command = gunicorn_command("http://127.0.0.1:1", 2)
    assert command[command.index("--config") + 1] == WEB_CONFIG
    for web, expected in (("sync", ("sync", 1)), ("gthread:2", ("gthread", 2)), ("gthread", ("gthread", 8))):
        full = burst.web_command("http://127.0.0.1:1", web, PROJECT_ROOT)
        assert workers_of(monkeypatch, ["gunicorn", *full[full.index("gunicorn") + 1 :]]) == expected
        assert full[-1] == "web.app:create_app()"
    granian = burst.web_command("http://127.0.0.1:1", "granian:4", PROJECT_ROOT)
    assert granian[granian.index("-m") + 1] == "granian" and granian[granian.index("--blocking-threads") + 1] == "4"
    assert granian[-1] == "web.app:create_app" and "--factory" in granian and granian[granian.index("--port") + 1] == "1"
