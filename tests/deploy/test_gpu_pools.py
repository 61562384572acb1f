"""The GPU pools as Kubernetes sees them, in every rendered overlay: each worker pool has a
PriorityClass that fits saeq's own scheduling (job workers never evict pods, the live worker may),
a PodDisruptionBudget that lets a drain through one pod at a time (its SIGTERM preempts the job,
which resumes elsewhere), and a grace period that covers a checkpoint. Objects are validated
strictly by test_manifests.py's rendering of every overlay; this checks what they say."""

from __future__ import annotations

import pytest

from saeq.platform.dispatch import KIND_QUEUE, LIVE_QUEUE, MULTI_GPU_QUEUE
from tests.deploy.test_manifests import OVERLAYS, consumed_queues, objects, validate_all

JOB_QUEUES = {*KIND_QUEUE.values(), MULTI_GPU_QUEUE}


def worker_pools(overlay: str) -> dict[str, dict]:
    """{Deployment name: Deployment} of the workers (those that consume a queue)."""
    return {
        name: d
        for name, d in objects(overlay, "Deployment").items()
        if "-Q" in d["spec"]["template"]["spec"]["containers"][0].get("args", [])
    }


def queues_of(deployment: dict) -> set[str]:
    return consumed_queues(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, selector  # matchExpressions would need more here
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_gpu_pool_has_a_priority_class_that_leaves_fair_share_to_saeq(overlay):
    classes = objects(overlay, "PriorityClass")
    assert classes and validate_all(list(classes.values())) == set()
    assert not any(c.get("globalDefault") for c in classes.values())  # never other pods' default
    assert all("namespace" not in c["metadata"] for c in classes.values())  # cluster-scoped
    pools = worker_pools(overlay)
    assert pools
    live_values, job_values = [], []
    for name, deployment in pools.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1, name
        cls = classes[pod["priorityClassName"]]
        if queues_of(deployment) & JOB_QUEUES:
            # Jobs move between workers by saeq's scheduler, per job: a job worker never evicts.
            assert cls["preemptionPolicy"] == "Never", name
            job_values.append(cls["value"])
        else:
            assert queues_of(deployment) == {LIVE_QUEUE}, name
            assert cls.get("preemptionPolicy", "PreemptLowerPriority") == "PreemptLowerPriority", name
            live_values.append(cls["value"])
    assert job_values and live_values and min(live_values) > max(job_values)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_drain_evicts_job_workers_one_at_a_time_and_never_blocks(overlay):
    budgets = objects(overlay, "PodDisruptionBudget")
    for name, deployment in worker_pools(overlay).items():
        if not queues_of(deployment) & JOB_QUEUES:
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [b["spec"] for b in budgets.values() if selects(b["spec"]["selector"], labels)]
        # 0 would block every drain; a drain of several nodes must leave the queue a worker.
        assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb, name
        assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name  # a stuck pod never blocks
        pod = deployment["spec"]["template"]["spec"]
        # SIGTERM preempts the job: time for its next safe point and the checkpoint write.
        assert pod["terminationGracePeriodSeconds"] >= 600, name
