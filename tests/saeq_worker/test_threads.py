"""Torch's thread count follows the CPUs the worker may really use: cgroup v2 and v1 quotas (fake
cgroup files), the affinity, and SAEQ_TORCH_THREADS, which overrides and must be a count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from saeq_worker.settings import WorkerSettings
from saeq_worker.threads import available_cpus, cgroup_cpu_dirs, cpu_quota, parse_threads, torch_threads


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("max 100000\n", None),  # no limit
        ("400000 100000\n", 4),
        ("150000 100000", 1),  # 1.5 CPUs: one thread, not two fighting over the quota
        ("50000 100000", 1),  # half a CPU: still one thread
        ("1600000 50000", 32),
    ],
)
def test_cgroup_v2_cpu_max(cpu_max, cpus):
    assert cpu_quota(cpu_max=cpu_max) == cpus


def test_cgroup_v1_cfs_quota_and_an_unlimited_one():
    assert cpu_quota(cfs_quota_us="200000\n", cfs_period_us="100000\n") == 2
    assert cpu_quota(cfs_quota_us="-1", cfs_period_us="100000") is None


def test_the_smaller_of_quota_and_affinity_wins():
    assert cpu_quota(cpu_max="800000 100000", affinity=3) == 3  # pinned to 3 cores of an 8-CPU quota
    assert cpu_quota(cpu_max="200000 100000", affinity=16) == 2
    assert cpu_quota(cpu_max="max 100000", affinity=6) == 6


def test_cgroup_files_are_read_from_paths_and_a_missing_one_limits_nothing(tmp_path):
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cpu_quota(cpu_max=tmp_path / "cpu.max") == 3
    assert cpu_quota(cpu_max=tmp_path / "absent") is None


def test_the_process_cgroup_and_its_ancestors_are_found(tmp_path):
    v2 = cgroup_cpu_dirs("0::/kubepods/pod1/worker\n", root=tmp_path)
    assert [d for d, _ in v2] == [tmp_path / p for p in ("kubepods/pod1/worker", "kubepods/pod1", "kubepods", ".")]
    (tmp_path / "cpu,cpuacct").mkdir()
    v1 = cgroup_cpu_dirs("9:memory:/x\n4:cpu,cpuacct:/docker/abc\n", root=tmp_path)
    assert v1 == [
        (tmp_path / "cpu,cpuacct/docker/abc", 1),
        (tmp_path / "cpu,cpuacct/docker", 1),
        (tmp_path / "cpu,cpuacct", 1),
    ]


def test_this_machine_gives_at_least_one_cpu_and_no_more_than_its_affinity():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_saeq_torch_threads_overrides_the_quota():
    assert torch_threads("3") == (3, "SAEQ_TORCH_THREADS")
    assert torch_threads(None)[0] == available_cpus()
    assert parse_threads("") is None
    assert WorkerSettings(torch_threads="5").torch_threads == 5  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "2.5"])
def test_a_bad_saeq_torch_threads_is_refused_naming_it(bad, monkeypatch):
    with pytest.raises(ValueError, match="SAEQ_TORCH_THREADS must be a positive whole number"):
        parse_threads(bad)
    monkeypatch.setenv("SAEQ_TORCH_THREADS", bad)
    with pytest.raises(ValidationError, match="SAEQ_TORCH_THREADS"):
        WorkerSettings()


def test_a_job_process_sets_torch_intra_and_inter_op_threads_once(tmp_path):
    # In a fresh interpreter: the inter-op count can be set once per process, before any parallel work.
    code = (
        "import torch; from saeq_worker.threads import configure_torch; "
        "configure_torch('3'); configure_torch('3'); print(torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3"]  # not the defaults (the core count)
