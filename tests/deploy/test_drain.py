"""Worker pods: where they land and how they leave. A drain, an eviction or a scale-in sends
SIGTERM to the Celery main process, which asks the running job to checkpoint and requeue
(saeq_worker.draining; end to end: tests/saeq_worker/test_preemption.py::
test_sigterm_to_the_worker_requeues_the_training_for_another_worker), within a grace period long
enough for a checkpoint. GPU pods are placed by their GPU request, not by a label stock clusters
lack. The steer pool keeps its process (and the loaded model) across live requests."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from tests.deploy.test_manifests import ROOT, objects

JOB_WORKERS = ("saeq-worker-gpu", "saeq-worker-gpu-multi")
GPU_WORKERS = (*JOB_WORKERS, "saeq-worker-steer")
# Node labels every conformant cluster sets (kubelet / cloud controller), so safe to select on.
STANDARD_LABEL_PREFIXES = ("kubernetes.io/", "node.kubernetes.io/", "topology.kubernetes.io/")


def pod(overlay: str, name: str) -> dict:
    return objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]


def worker_entrypoint() -> list[str]:
    for line in (ROOT / "docker" / "worker.Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return ast.literal_eval(line.removeprefix("ENTRYPOINT").strip())
    raise AssertionError("docker/worker.Dockerfile has no ENTRYPOINT")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("name", GPU_WORKERS)
def test_gpu_pods_select_no_node_label_a_stock_cluster_lacks(overlay, name):
    spec = pod(overlay, name)
    for label in spec.get("nodeSelector", {}):
        assert label.startswith(STANDARD_LABEL_PREFIXES), f"{name}: nodeSelector on {label}"
    (worker,) = spec["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1  # what actually places the pod
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_sigterm_reaches_the_celery_main_process_as_pid_1():
    # Exec form, no shell in between: Kubernetes signals PID 1, which is Celery itself.
    assert worker_entrypoint()[:1] == ["celery"]
    for name in GPU_WORKERS:
        (worker,) = pod("prod", name)["containers"]
        assert "command" not in worker, f"{name}: a command override would replace the ENTRYPOINT"
        assert "preStop" not in worker.get("lifecycle", {}), f"{name}: a preStop hook delays the SIGTERM"


@pytest.mark.parametrize("name", JOB_WORKERS)
def test_a_drained_job_worker_has_time_to_checkpoint(name):
    # The longest stretch between two safe points plus writing the checkpoint (worker-gpu.yaml).
    assert pod("prod", name)["terminationGracePeriodSeconds"] >= 600


def test_the_celery_shutdown_hook_asks_the_pool_jobs_to_yield():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from celery.signals import worker_shutting_down; import saeq_worker.celery_app;"
            "print([r[1]().__qualname__ for r in worker_shutting_down.receivers])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert "_preempt_pool_jobs" in out.stdout


def max_tasks_per_child(env: dict[str, str]) -> object:
    """worker_max_tasks_per_child of the worker's Celery app started with this pod env."""
    code = "import json; from saeq_worker.celery_app import app; print(json.dumps(app.conf.worker_max_tasks_per_child))"
    full = {k: v for k, v in os.environ.items() if not k.startswith("SAEQ_")} | env
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def pod_env(name: str) -> dict[str, str]:
    (worker,) = pod("prod", name)["containers"]
    return {e["name"]: e["value"] for e in worker["env"] if "value" in e and e["name"].startswith("SAEQ_WORKER_")}


def test_the_steer_pool_never_recycles_its_process_and_job_workers_still_do():
    assert max_tasks_per_child(pod_env("saeq-worker-steer")) is None  # Celery: no limit
    assert max_tasks_per_child(pod_env("saeq-worker-gpu")) == 50


@pytest.mark.parametrize("name", JOB_WORKERS)
def test_job_workers_may_patch_their_own_pod_and_nothing_else(name):
    # saeq_worker.pod_cost: the deletion cost annotation, so a scale-in takes an idle pod first.
    spec = pod("prod", name)
    assert spec["automountServiceAccountToken"] is True and spec["serviceAccountName"] == "saeq-worker"
    (worker,) = spec["containers"]
    fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in worker["env"]}
    assert fields["POD_NAME"] == "metadata.name" and fields["POD_NAMESPACE"] == "metadata.namespace"
    (binding,) = [b for b in objects("prod", "RoleBinding").values() if b["roleRef"]["name"] == "saeq-worker-pod-cost"]
    assert ("ServiceAccount", "saeq-worker") in {(s["kind"], s["name"]) for s in binding["subjects"]}
    role = objects("prod", "Role")["saeq-worker-pod-cost"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
