"""`python -m producer --version` prints the version pyproject.toml declares, read when asked."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from click.testing import CliRunner

from producer import cli
from shared.config import PROJECT_ROOT


def declared_version() -> str:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]


def test_version_prints_the_version_pyproject_declares():
    result = CliRunner().invoke(cli.main, ["--version"], obj=object())
    assert result.exit_code == 0, result.output
    assert result.output == f"mnist-queue, version {declared_version()}\n"


def test_the_version_is_read_when_asked_not_at_import(tmp_path, monkeypatch):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "mnist-queue"\nversion = "9.8.7"\n')
    monkeypatch.setattr(cli, "PYPROJECT", pyproject)
    result = CliRunner().invoke(cli.main, ["--version"], obj=object())
    assert (result.exit_code, result.output) == (0, "mnist-queue, version 9.8.7\n")
    pyproject.write_text('[project]\nname = "mnist-queue"\nversion = "9.8.8"\n')
    assert CliRunner().invoke(cli.main, ["--version"], obj=object()).output == "mnist-queue, version 9.8.8\n"


def test_python_m_producer_version_needs_no_settings_or_services():
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "ENV_FILE": ""}
    done = subprocess.run(
        [sys.executable, "-m", "producer", "--version"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, f"mnist-queue, version {declared_version()}\n"), done.stderr
