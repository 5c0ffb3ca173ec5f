"""The restart policy of ./run up (stack/restarts.py): doubling delays, giving up on a child that keeps exiting."""

import signal

from stack.restarts import CRASH_LIMIT, CRASH_WINDOW_SECONDS, FIRST_DELAY_SECONDS, Restarts, describe_exit


def test_delays_double_until_the_crash_limit_within_the_window():
    restarts = Restarts()
    delays = [restarts.delay_after_exit(now) for now in range(CRASH_LIMIT)]
    assert delays == [FIRST_DELAY_SECONDS * 2**n for n in range(CRASH_LIMIT - 1)] + [None]


def test_exits_older_than_the_window_are_forgotten():
    restarts = Restarts()
    now = 0.0
    for _ in range(3 * CRASH_LIMIT):  # exits just far enough apart that never CRASH_LIMIT fall within one window
        assert restarts.delay_after_exit(now) is not None
        now += CRASH_WINDOW_SECONDS / (CRASH_LIMIT - 1) + 1
    assert (
        restarts.delay_after_exit(now + CRASH_WINDOW_SECONDS + 1) == FIRST_DELAY_SECONDS
    )  # a long healthy run: back to the first delay


def test_exits_are_described_by_status_or_signal():
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
