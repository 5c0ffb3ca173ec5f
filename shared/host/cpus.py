"""How many CPUs this process may really use.

``os.cpu_count()`` reports the host's cores; in a container limited with ``--cpus`` or a
cpuset that overstates the share, and sizing a worker pool by it oversubscribes the CPUs.
This reads the scheduler affinity and the cgroup CPU quota (v2, then v1) instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cpus(quota: str, period: str) -> int | None:
    """CPUs granted by a CFS quota and period (``"max"`` or a negative quota: unlimited)."""
    if quota.strip() in {"max", ""} or int(quota) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def cgroup_cpus(
    v2_cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> int | None:
    """The CPU limit of this process's cgroup, or None when there is none."""
    if v2_cpu_max.exists():
        quota, _, period = v2_cpu_max.read_text().strip().partition(" ")
        return quota_cpus(quota, period or "100000")
    if v1_quota.exists() and v1_period.exists():
        return quota_cpus(v1_quota.read_text(), v1_period.read_text())
    return None


def available_cpus() -> int:
    """The smaller of the CPUs this process may be scheduled on and its cgroup quota."""
    scheduled = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpus()
    return min(scheduled, limit) if limit else scheduled
