"""KEDA's ScaledObject for the GPU workers: the pods it asks for, worked out from the rendered
manifest on examples (waiting and running jobs), and where its triggers read from."""

from __future__ import annotations

import ast
import math
import operator
import os
import re

import pytest
import yaml

from saeq.platform.dispatch import QUEUES
from tests.deploy.test_manifests import COMPONENTS, K8S, kustomize, objects

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_formula(formula: str, metrics: dict[str, float]) -> float:
    """KEDA's scalingModifiers formula (expr-lang) for the subset we use: trigger names, numbers,
    + - * / and parentheses. Anything else fails the test, so a new construct gets a new evaluator."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name):
            assert node.id in metrics, f"formula names {node.id!r}, not a trigger: {sorted(metrics)}"
            return metrics[node.id]
        raise AssertionError(f"formula construct the test does not evaluate: {ast.dump(node)}")

    return ev(ast.parse(formula, mode="eval"))


def desired_pods(spec: dict, metrics: dict[str, float]) -> int:
    """What KEDA + the HPA ask for: 0 while the formula is at or under activationTarget (with
    minReplicaCount 0), else ceil(value / target) (AverageValue) clamped to [min, max]."""
    mod = spec["advanced"]["scalingModifiers"]
    assert mod["metricType"] == "AverageValue"  # Value would not divide by the pod count
    value = evaluate_formula(mod["formula"], metrics)
    if value <= float(mod.get("activationTarget", "0")) and spec["minReplicaCount"] == 0:
        return 0
    pods = math.ceil(value / float(mod["target"]))
    return max(spec.get("minReplicaCount", 0), min(spec["maxReplicaCount"], pods))


def gpu_scaler() -> dict:
    return objects("prod", "ScaledObject")["saeq-worker-gpu"]["spec"]


def trigger_inputs(spec: dict, waiting: float, running: float) -> dict[str, float]:
    """The value each trigger's query yields when the API exports these counts for `gpu`."""
    out = {}
    for t in spec["triggers"]:
        query = t["metadata"]["query"]
        m = re.fullmatch(r'max\((saeq_queue_(waiting|running)_jobs)\{queue="([\w-]+)"\}\) or vector\(0\)', query)
        assert m, f"trigger {t['name']}: query the test does not evaluate: {query}"
        assert m.group(3) == "gpu"
        out[t["name"]] = waiting if m.group(2) == "waiting" else running
    return out


@pytest.mark.parametrize(
    ("waiting", "running", "pods"),
    [
        (0, 0, 0),  # nothing to do: no GPU held
        (1, 0, 1),  # a job waits with no pod (the scheduler sends nothing until a pod advertises)
        (0, 3, 3),  # scale-in never goes under the jobs in progress
        (2, 3, 5),  # 3 busy pods, 2 new jobs: 2 more pods (a max() would give 3 and starve them)
        (4, 4, 8),
        (10, 5, 8),  # capped at maxReplicaCount
    ],
)
def test_gpu_pods_asked_for_are_the_waiting_plus_the_running_jobs(waiting, running, pods):
    spec = gpu_scaler()
    assert desired_pods(spec, trigger_inputs(spec, waiting, running)) == pods


def test_the_scaler_reads_both_series_and_only_queues_that_exist():
    spec = gpu_scaler()
    assert {t["type"] for t in spec["triggers"]} == {"prometheus"}
    assert set(trigger_inputs(spec, 0, 0)) == {"waiting", "running"}
    for t in spec["triggers"]:
        for queue in re.findall(r'queue="([^"]+)"', t["metadata"]["query"]):
            assert queue in QUEUES


def test_with_external_redis_no_keda_trigger_addresses_the_in_cluster_redis(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / c, tmp_path) for c in ("keda", "external-redis")],
            }
        )
    )
    assert {"keda", "external-redis"} <= set(COMPONENTS)
    docs = kustomize(tmp_path)
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    assert keda, "the keda component rendered no KEDA objects"
    assert "saeq-redis" not in yaml.safe_dump_all(keda)
    for d in keda:
        for t in d["spec"].get("triggers", []):
            assert t["type"] != "redis", f"{d['metadata']['name']}: a redis trigger with external Redis"
