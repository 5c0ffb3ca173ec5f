"""When ``./run up`` starts a worker or the web again after it exited on its own, and when it gives up.

As compose's ``restart: unless-stopped`` does, a child that exits while the stack runs (a crash,
an out-of-memory kill, a ``kill -9``, any exit status) is started again after a delay that doubles
with each exit in the last CRASH_WINDOW_SECONDS: 0.5 s, 1 s, 2 s, 4 s. A child that exits
CRASH_LIMIT times within that window would only go on failing (a setting it refuses, a database
it cannot reach), so the stack then stops with an error naming the child and its log. Exits
older than the window are forgotten: a worker that crashes once an hour is restarted for ever,
after half a second each time.
"""

from __future__ import annotations

import collections
import signal

FIRST_DELAY_SECONDS = 0.5  # Docker starts at 0.1 s; a Python child needs longer than that to start anyway
CRASH_LIMIT = 5  # exits within CRASH_WINDOW_SECONDS after which the stack gives up
CRASH_WINDOW_SECONDS = 60.0


class Restarts:
    """The recent exits of one child."""

    def __init__(self) -> None:
        self._exits: collections.deque[float] = collections.deque()

    def delay_after_exit(self, now: float) -> float | None:
        """Seconds to wait before starting the child again, or None: it exited CRASH_LIMIT times within the window."""
        self._exits.append(now)
        while now - self._exits[0] > CRASH_WINDOW_SECONDS:
            self._exits.popleft()
        if len(self._exits) >= CRASH_LIMIT:
            return None
        return FIRST_DELAY_SECONDS * 2 ** (len(self._exits) - 1)


def describe_exit(returncode: int) -> str:
    """``exited with status 1``, or ``was killed by SIGKILL`` (subprocess reports a signal as a negative status)."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
