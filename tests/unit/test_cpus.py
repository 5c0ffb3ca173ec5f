"""CPU counting that respects container limits: the scheduler affinity and the cgroup quota."""

from __future__ import annotations

import os
import threading

import pytest

from shared.host import cpus
from shared.host.cpus import available_cpus, cgroup_cpus, quota_cpus

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="no scheduler affinity on this platform"
)


def test_quota_rounds_up_and_unlimited_is_none():
    assert quota_cpus("150000", "100000") == 2
    assert quota_cpus("50000", "100000") == 1
    assert quota_cpus("max", "100000") is None
    assert quota_cpus("-1", "100000") is None


def test_cgroup_v2_file_is_read_before_v1(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cgroup_cpus(cpu_max, tmp_path / "none", tmp_path / "none") == 2
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpus(cpu_max, tmp_path / "none", tmp_path / "none") is None


def test_cgroup_v1_quota(tmp_path):
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("300000\n")
    period.write_text("100000\n")
    assert cgroup_cpus(tmp_path / "absent", quota, period) == 3


def with_affinity(allowed: set[int], function):
    """``function()`` in a thread of its own scheduled on ``allowed`` only (affinity is per thread on Linux)."""
    result = []

    def run() -> None:
        os.sched_setaffinity(0, allowed)
        result.append(function())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


@needs_affinity
def test_available_cpus_counts_only_the_cpus_this_process_may_be_scheduled_on(monkeypatch):
    monkeypatch.setattr(cpus, "cgroup_cpus", lambda: None)
    allowed = sorted(os.sched_getaffinity(0))
    assert available_cpus() == len(allowed)
    assert with_affinity({allowed[0]}, available_cpus) == 1


@needs_affinity
@pytest.mark.parametrize("limit", [1, 2, 3, 64])
def test_available_cpus_is_the_smaller_of_affinity_and_cgroup_quota(monkeypatch, limit):
    monkeypatch.setattr(cpus, "cgroup_cpus", lambda: limit)
    scheduled = len(os.sched_getaffinity(0))
    assert available_cpus() == min(scheduled, limit)
    assert with_affinity({min(os.sched_getaffinity(0))}, available_cpus) == 1


@needs_affinity
def test_available_cpus_on_this_machine_respects_its_real_limits():
    limit = cgroup_cpus()
    scheduled = len(os.sched_getaffinity(0))
    assert available_cpus() == (min(scheduled, limit) if limit else scheduled)
