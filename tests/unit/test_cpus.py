"""CPU counting that respects container limits."""

from shared.cpus import available_cpus, cgroup_cpus, quota_cpus


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


def test_available_cpus_is_at_least_one():
    assert available_cpus() >= 1
