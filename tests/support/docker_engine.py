"""A Docker engine for the container test: the one ``DOCKER_HOST`` names, or a private ``dockerd``.

The private engine keeps everything of its own under one temporary folder (``--data-root``,
``--exec-root``, its socket and its log), reads no ``/etc/docker/daemon.json`` and makes no
``docker0``. It touches neither the machine's iptables nor its IP forwarding
(``--iptables=false --ip-forward=false --ip-masq=false``): containers reach each other over
compose's bridge and the machine through published ports (Docker's userland proxy, here on
127.0.0.1), and nothing beyond this machine. Image builds that download packages run with
``--network host`` instead (``docker_images.py``, and the build override of the compose runs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_START_SECONDS = 60
ENGINE_STOP_SECONDS = 30


class EngineUnavailable(RuntimeError):
    """No Docker engine could be reached or started here."""


@dataclass
class Engine:
    """A reachable engine: ``env`` for the docker CLI and compose; ``stop()`` ends it if it is ours."""

    host: str
    root: Path | None = None  # our private engine's folder, None for one DOCKER_HOST names
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        ran = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and ran.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} exited {ran.returncode}:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
            )
        return ran

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def stop(self) -> None:
        if self.process is None:
            if (
                self.root is None and "DOCKER_CONFIG" in self.env
            ):  # DOCKER_HOST's engine runs on; our client config goes
                shutil.rmtree(self.env["DOCKER_CONFIG"], ignore_errors=True)
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
            try:
                self.process.wait(ENGINE_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        assert self.root is not None
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def client_env(host: str, config_dir: Path) -> dict[str, str]:
    """What the docker CLI and compose see: this engine, a config of their own, nothing else of ours."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    config_dir.mkdir(parents=True, exist_ok=True)
    plugins = Path.home() / ".docker" / "cli-plugins"  # a Compose v2 installed for this user only
    if plugins.is_dir() and not (config_dir / "cli-plugins").exists():
        (config_dir / "cli-plugins").symlink_to(plugins)
    return {**env, "DOCKER_HOST": host, "DOCKER_CONFIG": str(config_dir)}


def engine_answers(env: dict[str, str]) -> bool:
    try:
        ran = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ran.returncode == 0


def start_engine() -> Engine:
    """The engine ``DOCKER_HOST`` points at if it answers, else a private ``dockerd`` (needs root)."""
    if shutil.which("docker") is None:
        raise EngineUnavailable("no docker client (apt-get install docker.io)")
    if os.environ.get("DOCKER_HOST"):
        host = os.environ["DOCKER_HOST"]
        env = client_env(host, Path(tempfile.mkdtemp(prefix="mnistq-docker-config-")))
        if not engine_answers(env):
            raise EngineUnavailable(f"DOCKER_HOST={host} does not answer")
        return Engine(host=host, env=env)
    if shutil.which("dockerd") is None:
        raise EngineUnavailable("no dockerd (apt-get install docker.io) and no DOCKER_HOST")
    if os.geteuid() != 0:
        raise EngineUnavailable("a private dockerd needs root; or set DOCKER_HOST to a running engine")
    # A short path: the engine's and containerd's Unix sockets live below it (108 bytes at most).
    root = Path(tempfile.mkdtemp(prefix="mnistq-docker-", dir="/tmp"))
    (root / "daemon.json").write_text(json.dumps({}))
    host = f"unix://{root}/docker.sock"
    command = [
        "dockerd",
        f"--config-file={root / 'daemon.json'}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'docker.pid'}",
        f"--host={host}",
        "--bridge=none",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--userland-proxy=true",
    ]
    log = (root / "dockerd.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    engine = Engine(host=host, root=root, process=process, env=client_env(host, root / "config"))
    deadline = time.monotonic() + ENGINE_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if engine_answers(engine.env):
            return engine
        time.sleep(0.5)
    tail = (root / "dockerd.log").read_text()[-3000:]
    engine.stop()
    raise EngineUnavailable(f"dockerd did not start:\n{tail}")


def unmount_below(root: Path) -> None:
    """Mounts a killed engine may have left below its folder, deepest first, so none is deleted through."""
    prefix = f"{root}/"
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


@dataclass
class Compose:
    """One compose project with the real docker-compose.yml; Compose v2 (``docker compose``) or 1.29."""

    engine: Engine
    project: str
    files: Sequence[Path]
    env_file: Path
    command: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.command = self.command or compose_command(self.engine.env)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 900, input: str | None = None
    ) -> subprocess.CompletedProcess:
        files = [part for path in self.files for part in ("-f", str(path))]
        full = [*self.command, "--project-name", self.project, "--env-file", str(self.env_file), *files, *args]
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        ran = subprocess.run(full, env=self.engine.env, capture_output=True, text=True, timeout=timeout, **stdin)
        if check and ran.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} exited {ran.returncode}:\n{ran.stdout[-4000:]}\n{ran.stderr[-6000:]}")
        return ran

    def container_ids(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()

    def running(self, service: str) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        filters = (
            "--filter",
            label,
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--filter",
            "status=running",
        )
        return self.engine.docker("ps", "-q", "--no-trunc", *filters).stdout.split()

    def resources(self, kind: str) -> list[str]:
        """This project's containers, networks or volumes that the engine still has (by compose's label)."""
        label = f"label=com.docker.compose.project={self.project}"
        listing = ["ps", "-aq"] if kind == "container" else [kind, "ls", "-q"]
        return self.engine.docker(*listing, "--filter", label).stdout.split()

    @property
    def version(self) -> str:
        return self("version", "--short").stdout.strip()


def compose_command(env: dict[str, str]) -> list[str]:
    """``docker compose`` (v2) where the plugin is installed, else Debian's ``docker-compose`` (1.29).

    ``MNIST_COMPOSE`` picks one: ``MNIST_COMPOSE=docker-compose`` or ``MNIST_COMPOSE="docker compose"``.
    """
    chosen = os.environ.get("MNIST_COMPOSE")
    if chosen:
        return chosen.split()
    if subprocess.run(["docker", "compose", "version"], env=env, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable(
        "no Compose: neither the docker compose plugin nor docker-compose (apt-get install docker-compose)"
    )
