"""Every launcher of the web runs ``python -m web.serve`` (granian, WEB_CONCURRENCY processes of WEB_THREADS
threads): the web image, Kubernetes, ``./run up``, the tests and bench. Its flags and the settings decide;
nothing is started here. bench still runs gunicorn for trees from before web/serve.py."""

from __future__ import annotations

import json
import re
import sys

import pytest
from click.testing import CliRunner
from gunicorn.app.wsgiapp import WSGIApplication

from bench import burst
from shared.config import PROJECT_ROOT, load_settings
from web import serve


def web_image_command() -> list[str]:
    return json.loads(
        re.search(r"^CMD (\[.*\])$", (PROJECT_ROOT / "Dockerfile.web").read_text(), re.MULTILINE).group(1)
    )


def test_the_image_and_every_launcher_run_web_serve():
    assert web_image_command() == ["python", "-m", "web.serve", "--bind", "0.0.0.0:8000"]
    command = serve.command("127.0.0.1:8001")
    assert command == [
        sys.executable,
        "-m",
        "web.serve",
        "--bind",
        "127.0.0.1:8001",
    ]  # ./run up's (stack/supervisor.py)
    full = serve.command("127.0.0.1:8002", processes=3, threads=4, backlog=99, access_log=False)
    assert full[full.index("--workers") + 1] == "3" and full[full.index("--threads") + 1] == "4"
    assert full[full.index("--backlog") + 1] == "99" and full[-1] == "--no-access-log"


def test_its_options_parse_and_the_settings_give_the_defaults():
    context = serve.main.make_context("serve", ["--bind", "127.0.0.1:9", "--threads", "3"])
    assert context.params == {
        "bind": "127.0.0.1:9",
        "workers": None,
        "threads": 3,
        "backlog": serve.BACKLOG,
        "access_log": True,
    }
    defaults = load_settings({})
    assert (defaults.web_processes, defaults.web_threads) == (2, 32)
    chosen = load_settings({"WEB_CONCURRENCY": "4", "WEB_THREADS": "16"})
    assert (chosen.web_processes, chosen.web_threads) == (4, 16)
    with pytest.raises(ValueError, match="WEB_THREADS must be at least 1"):
        load_settings({"WEB_THREADS": "0"})


@pytest.mark.parametrize("bind", ["8000", "localhost", "127.0.0.1:http"])
def test_a_bind_that_is_not_host_and_port_is_refused_before_anything_starts(bind):
    result = CliRunner().invoke(serve.main, ["--bind", bind])
    assert result.exit_code == 2 and "expected HOST:PORT" in result.output


def workers_of(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[str, int]:
    """(worker class, threads) gunicorn would run for ``argv``."""
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.setattr(sys, "argv", argv)
    config = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    return config.worker_class_str, config.threads


def test_bench_runs_web_serve_and_gunicorn_for_older_trees(monkeypatch, tmp_path):
    ours = burst.web_command("http://127.0.0.1:1", "serve:4", PROJECT_ROOT)
    assert (
        ours[ours.index("-m") + 1] == "web.serve"
        and ours[ours.index("--threads") + 1] == "4"
        and "--no-access-log" in ours
    )
    for web, expected in (("sync", ("sync", 1)), ("gthread:2", ("gthread", 2)), ("gthread", ("gthread", 8))):
        full = burst.web_command(
            "http://127.0.0.1:1", web, tmp_path
        )  # a tree with neither web/serve.py nor a gunicorn config
        assert workers_of(monkeypatch, ["gunicorn", *full[full.index("gunicorn") + 1 :]]) == expected
        assert full[-1] == "web.app:create_app()" and "--config" not in full
    with pytest.raises(ValueError, match="no web/serve.py"):
        burst.web_command("http://127.0.0.1:1", "serve", tmp_path)
    with pytest.raises(ValueError, match="expected serve"):
        burst.web_command("http://127.0.0.1:1", "uwsgi", PROJECT_ROOT)
