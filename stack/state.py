"""What a running stack started, kept in ``STACK_DIR/stack.json``.

``./run down`` and ``./run status`` run in another process than ``./run up``; this file
tells them which processes to stop and where the services listen, even after the
supervising process itself was killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

STATE_FILE_NAME = "stack.json"
ZOMBIE_STATE = "Z"  # the state letter in /proc/PID/stat


@dataclasses.dataclass
class StackState:
    supervisor_pid: int
    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool
    web_url: str | None = None
    ready: bool = False
    # name -> pid of a child that leads its own process group (redis, worker, web)
    children: dict[str, int] = dataclasses.field(default_factory=dict)


def state_path(stack_dir: Path) -> Path:
    return stack_dir / STATE_FILE_NAME


def save_state(stack_dir: Path, state: StackState) -> None:
    """Write atomically, so a reader never sees half a file."""
    path = state_path(stack_dir)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(dataclasses.asdict(state), indent=2))
    partial.replace(path)


def load_state(stack_dir: Path) -> StackState | None:
    path = state_path(stack_dir)
    if not path.exists():
        return None
    return StackState(**json.loads(path.read_text()))


def clear_state(stack_dir: Path) -> None:
    state_path(stack_dir).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True while the process runs; an exited one that its parent has not reaped yet (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): kill(0) is all we know
    return stat.rpartition(")")[2].split()[0] != ZOMBIE_STATE
