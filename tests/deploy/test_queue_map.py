"""One queue map, saeq.platform.dispatch, and everything that names a queue checked against it: the
compose workers, each overlay's worker Deployments, KEDA's ScaledObjects, the Grafana dashboards'
kind/queue filters, and docs/deploy.md. A queue renamed or added in code fails here until each follows."""

from __future__ import annotations

import json
import re

import pytest

from saeq.platform.dispatch import KIND_QUEUE, LIVE_QUEUE, MULTI_GPU_QUEUE, QUEUES
from tests.deploy.test_manifests import OVERLAYS, ROOT, compose, consumed_queues, kustomize, objects

SENT = {*KIND_QUEUE.values(), MULTI_GPU_QUEUE, LIVE_QUEUE}


def test_the_code_sends_to_every_queue_it_declares():
    assert set(QUEUES) == SENT


def deployment_queues(deployments: dict) -> dict[str, set[str]]:
    return {
        name: {
            q
            for c in d["spec"]["template"]["spec"]["containers"]
            if "-Q" in c.get("args", [])
            for q in consumed_queues(c["args"])
        }
        for name, d in deployments.items()
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_queue_has_a_deployment_and_none_consumes_an_unknown_one(overlay):
    queues = deployment_queues(objects(overlay, "Deployment"))
    served = set().union(*queues.values())
    assert served == SENT, f"{overlay}: consumed {sorted(served)}, sent {sorted(SENT)}"


def compose_queues(command: list[str]) -> set[str]:
    return consumed_queues([re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in command])


def test_every_queue_has_a_compose_worker_and_the_suggested_cpu_queues_are_real():
    services = compose()["services"]
    workers = {n: compose_queues(s["command"]) for n, s in services.items() if n.startswith("worker")}
    assert set().union(*workers.values()) == SENT, workers
    # The suggestion for a machine without a GPU must still serve live requests (steer) and jobs.
    for path in ("docker-compose.yml", ".env.example", "docs/deploy.md"):
        for value in re.findall(r"SAEQ_CPU_QUEUES=([\w,-]+)", (ROOT / path).read_text()):
            queues = set(value.split(","))
            assert queues <= SENT and {LIVE_QUEUE, *KIND_QUEUE.values()} <= queues, f"{path}: {value}"


def test_every_scaled_object_names_a_real_queue_and_every_scaled_deployment_has_one():
    docs = kustomize(ROOT / "k8s" / "overlays" / "prod")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    queues = deployment_queues(deployments)
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert scaled
    for target, so in scaled.items():
        assert target in deployments, f"ScaledObject for missing Deployment {target}"
        for trigger in so["spec"]["triggers"]:
            named = set(re.findall(r'queue\s*=\s*"([^"]+)"', json.dumps(trigger["metadata"]).replace('\\"', '"')))
            named |= {trigger["metadata"][k] for k in ("listName",) if k in trigger["metadata"]}
            assert named, f"{target}: trigger {trigger.get('name')} names no queue"
            assert named <= queues[target] <= SENT, f"{target} consumes {queues[target]}, scales on {named}"
    # KEDA owns replicas: a Deployment with none set is scaled, so it needs a ScaledObject.
    for name, d in deployments.items():
        if queues[name] and "replicas" not in d["spec"]:
            assert name in scaled, f"{name} has no replicas and no ScaledObject"


SELECTOR = re.compile(r'\b(kind|queue)\s*(=~|=)\s*\\?"([^"\\]*)\\?"')


def dashboard_exprs():
    paths = [
        *(ROOT / "k8s" / "base" / "grafana" / "dashboards").glob("*.json"),
        *(ROOT / "deploy" / "grafana").rglob("*.json"),
    ]
    for path in paths:

        def walk(o):
            if isinstance(o, dict):
                for k, v in o.items():
                    if k in ("expr", "query", "definition") and isinstance(v, str):
                        yield v
                    else:
                        yield from walk(v)
            elif isinstance(o, list):
                for x in o:
                    yield from walk(x)

        for expr in walk(json.loads(path.read_text())):
            yield path.name, expr


def test_dashboard_filters_by_kind_or_queue_cover_every_one():
    known = {"kind": set(KIND_QUEUE), "queue": SENT}
    for name, expr in dashboard_exprs():
        for label, op, value in SELECTOR.findall(expr):
            if "$" in value:  # a dashboard variable: all values unless a user picks
                continue
            values = set(value.split("|")) if op == "=~" else {value}
            assert values <= known[label], f"{name}: {label}{op}{value!r} names an unknown {label}"
            if op == "=~":
                assert values == known[label], f"{name}: {label}=~{value!r} leaves out {known[label] - values}"


def test_selector_parser_sees_a_panel_that_leaves_label_out():
    expr = 'sum(rate(saeq_team_device_seconds_total{kind=~"harvest|train|evaluate|steer"}[1h]))'
    (sel,) = SELECTOR.findall(expr)
    assert set(sel[2].split("|")) != set(KIND_QUEUE)


def test_docs_name_the_queues_the_code_has():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    listed = re.search(r"are (?:two|three|four|five) \(((?:`[\w-]+`,?\s*)+)", docs)
    assert listed, "docs/deploy.md: the list of queues ('there are three (`gpu`, ...')"
    assert set(re.findall(r"`([\w-]+)`", listed.group(1))) == SENT
    # "`gpu` for every job kind, harvest/train/...": every kind named.
    kinds = re.search(r"`gpu` for every job kind, ([\w/]+)", docs)
    assert kinds and set(kinds.group(1).split("/")) == {k for k, q in KIND_QUEUE.items() if q == "gpu"}
    assert not re.search(r"`cpu` queue|-Q\s+\S*\bcpu\b|queue=\"cpu\"", docs), "docs/deploy.md names a cpu queue"
