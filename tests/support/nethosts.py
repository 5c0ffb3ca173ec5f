"""The services of several hosts on a ``netns.Network``: PostgreSQL and Redis on ``data``, workers, the web.

Each listens on its host's address only and is given the others' addresses, never loopback.
PostgreSQL is the machine's own binaries (``/usr/lib/postgresql/*/bin``) under the ``postgres``
user (it refuses root), with no unix socket, so it cannot collide with the machine's server.
Redis runs with the compose file's persistence (append-only, fsynced each second).
``round_trip`` puts the data host a round-trip time away: netem on its link where the kernel has it,
else a delay relay (tests/support/delay_relay.py) on the data host in front of both.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from producer.ingest import load_mnist, mnist_rows
from shared import images, models
from shared.config import DEFAULT_MNIST_DIR, DEFAULT_MODEL_PATH
from shared.training import registration
from stack.processes import ChildProcess, log_contains, signal_group
from tests.support import netns
from tests.support.netns import Network
from web import serve

POSTGRES_PORT = 5432
REDIS_PORT = 6379
WEB_PORT = 8000
RELAY_PORT_OFFSET = 10_000  # the delay relay listens on the data host at each service's port + this
DATABASE = "mnist"
READY_SECONDS = 60
WORKER_READY_SECONDS = 120
# The compose file's redis command, word for word: what a restart keeps is what this keeps.
COMPOSE_REDIS_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "everysec")


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise FileNotFoundError("no PostgreSQL server under /usr/lib/postgresql/*/bin (apt package postgresql)")
    return Path(found[-1]).parent


class Postgres:
    """A PostgreSQL of its own on ``host``: a fresh cluster, trust for the private network only."""

    def __init__(self, net: Network, host: str, log_dir: Path, settings: tuple[str, ...] = ()) -> None:
        self.net, self.host, self.log_dir, self.settings = net, host, log_dir, settings
        self.folder = Path(tempfile.mkdtemp(prefix="mnqnet-postgres-"))
        self.data = self.folder / "data"
        user = pwd.getpwnam("postgres")
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._as_postgres(
            [str(postgres_bin() / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]
        )
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write(f"host all all {net.subnet} trust\n")
        self.url = f"postgresql://postgres@{net.address(host)}:{POSTGRES_PORT}/{DATABASE}"
        self.starts = 0
        self.process = self.start()

    def _as_postgres(self, command: list[str]) -> list[str]:
        full = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]
        subprocess.run(full, check=True, capture_output=True)
        return full

    def start(self) -> ChildProcess:
        self.starts += 1
        address = self.net.address(self.host)
        options = [f"listen_addresses={address}", f"port={POSTGRES_PORT}", "unix_socket_directories=",
                   "shared_buffers=32MB", "max_connections=60", *self.settings]  # fmt: skip
        command = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(postgres_bin() / "postgres"),
                   "-D", str(self.data), *(part for option in options for part in ("-c", option))]  # fmt: skip
        log = self.log_dir / f"postgres-{self.starts}.log"
        ready = logged_from_now(log, b"ready to accept connections")
        process = self.net.start(self.host, "postgres", command, {"PATH": os.environ["PATH"]}, log)
        process.wait_until(ready, READY_SECONDS)
        return process

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (open transactions roll back), as ``docker stop`` with the image's STOPSIGNAL."""
        signal_group(self.process.pid, mode)
        self.process.process.wait(READY_SECONDS)

    def restart(self) -> None:
        self.stop()
        self.process = self.start()

    def create_database(self) -> None:
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")

    def remove(self) -> None:
        if self.process.running():
            self.stop(signal.SIGQUIT)
        shutil.rmtree(self.folder, ignore_errors=True)


class Redis:
    """redis-server on ``host`` with the compose file's persistence, its files in a folder of its own."""

    def __init__(self, net: Network, host: str, log_dir: Path) -> None:
        self.net, self.host, self.log_dir = net, host, log_dir
        self.folder = Path(tempfile.mkdtemp(prefix="mnqnet-redis-"))
        self.url = f"redis://{net.address(host)}:{REDIS_PORT}/0"
        self.starts = 0
        self.process = self.start()

    def start(self) -> ChildProcess:
        self.starts += 1
        command = [shutil.which("redis-server") or "redis-server", "--bind", self.net.address(self.host),
                   "--port", str(REDIS_PORT), "--dir", str(self.folder), "--protected-mode", "no",
                   *COMPOSE_REDIS_PERSISTENCE]  # fmt: skip
        log = self.log_dir / f"redis-{self.starts}.log"
        ready = logged_from_now(log, b"Ready to accept connections")
        process = self.net.start(self.host, "redis", command, {}, log)
        process.wait_until(ready, READY_SECONDS)
        return process

    def restart(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: ``docker compose restart`` (Redis writes its log out first); SIGKILL: a crash."""
        signal_group(self.process.pid, how)
        self.process.process.wait(READY_SECONDS)
        self.process = self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def remove(self) -> None:
        self.process.stop(5)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_data_host(stack: contextlib.ExitStack, net: Network, logs: Path) -> tuple[Postgres, Redis]:
    """PostgreSQL and Redis on ``data``, removed when ``stack`` closes, the database migrated with the bundled
    model registered; this thread joins the network as ``control`` until then (its connections go over it)."""
    postgres = Postgres(net, "data", logs)
    stack.callback(postgres.remove)
    redis_server = Redis(net, "data", logs)
    stack.callback(redis_server.remove)
    stack.enter_context(net.inside())
    postgres.create_database()
    registration.prepare_database(postgres.url, DEFAULT_MODEL_PATH, DEFAULT_MNIST_DIR)
    return postgres, redis_server


def store_test_images(database_url: str, count: int) -> tuple[list[int], str]:
    """``count`` MNIST test images stored: (their ids, the production model version). Beyond the split's 10,000,
    copies of its images, each stored as a row of its own (a ``source`` name), for a job longer than the split."""
    digit_images, labels = load_mnist(DEFAULT_MNIST_DIR, "test", None)
    rows = list(mnist_rows(digit_images, labels, "test"))
    copies = (
        rows[n % len(rows)]._replace(image_index=None, source=f"copy-{n}") for n in range(len(rows), max(count, 0))
    )
    with contextlib.closing(psycopg.connect(database_url)) as conn:
        image_ids = images.store.insert_images(conn, [*rows[:count], *copies])
        return list(image_ids), models.registry.resolve(conn, models.registry.PRODUCTION)


def logged_from_now(log_path: Path, marker: bytes) -> Callable[[], bool]:
    """A readiness probe for a process about to start: ``marker`` written after now, not by an earlier run
    appending to the same log (the bench keeps its logs in one folder)."""
    return log_contains(log_path, marker, log_path.stat().st_size if log_path.exists() else 0)


def start_worker(net: Network, host: str, env: dict[str, str], log_path: Path) -> ChildProcess:
    """``python -m worker`` on ``host``, named after it: failover's node names tell hosts apart."""
    command = [sys.executable, "-m", "worker", "--hostname", f"{host}@%h", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]  # fmt: skip
    ready = [logged_from_now(log_path, marker) for marker in (b" ready.", b"upload consumer")]
    process = net.start(host, "python -m worker", command, env, log_path)
    process.wait_until(lambda: all(probe() for probe in ready), WORKER_READY_SECONDS)
    return process


def start_web(net: Network, host: str, env: dict[str, str], log_path: Path) -> tuple[ChildProcess, str]:
    """``python -m web.serve`` on ``host``'s address; and its URL. Call from inside the network (``net.inside``)."""
    url = f"http://{net.address(host)}:{WEB_PORT}"
    process = net.start(host, "web", serve.command(url.removeprefix("http://"), processes=1), env, log_path)
    process.wait_until(lambda: answers(f"{url}/healthz"), READY_SECONDS)
    return process, url


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class DataPath:
    """How the other hosts reach the data host: its URLs, how the delay was made, the relay when there is one."""

    database_url: str
    redis_url: str
    how: str  # "none" (no delay asked), "netem" or "relay"
    relay: ChildProcess | None = None


@contextlib.contextmanager
def round_trip(
    net: Network, postgres: Postgres, redis_server: Redis, rtt_ms: float, log_dir: Path
) -> Iterator[DataPath]:
    """The data host ``rtt_ms`` away from the hosts that use the URLs yielded; as before on exit.

    netem on the data host's link when the kernel has it (every host is then that far, the test's own
    ``control`` too); else a relay on the data host holding each direction for half the round trip, in front
    of PostgreSQL and Redis, and only the hosts given its URLs pay the delay.
    """
    if not rtt_ms:
        yield DataPath(postgres.url, redis_server.url, "none")
    elif netns.netem_available():
        net.shape(postgres.host, delay_ms=rtt_ms / 2)
        try:
            yield DataPath(postgres.url, redis_server.url, "netem")
        finally:
            net.shape(postgres.host)
    else:
        relay = start_relay(
            net, postgres.host, rtt_ms / 2, (POSTGRES_PORT, REDIS_PORT), log_dir / f"relay-{rtt_ms:g}.log"
        )
        try:
            yield DataPath(relayed(postgres.url), relayed(redis_server.url), "relay", relay)
        finally:
            relay.stop()


def start_relay(net: Network, host: str, delay_ms: float, ports: tuple[int, ...], log_path: Path) -> ChildProcess:
    """A delay relay on ``host``, each of ``ports`` relayed from its port + RELAY_PORT_OFFSET."""
    address = net.address(host)
    pairs = [f"{address}:{port + RELAY_PORT_OFFSET}={address}:{port}" for port in ports]
    command = [sys.executable, "-m", "tests.support.delay_relay", "--delay-ms", f"{delay_ms:g}", *pairs]
    ready = logged_from_now(log_path, b"relay ready")
    process = net.start(host, "delay relay", command, {"PATH": os.environ["PATH"]}, log_path)
    process.wait_until(ready, READY_SECONDS)
    return process


def relayed(url: str) -> str:
    """``url`` with its port moved to the relay's."""
    head, _, tail = url.rpartition(":")
    port, slash, rest = tail.partition("/")
    return f"{head}:{int(port) + RELAY_PORT_OFFSET}{slash}{rest}"
