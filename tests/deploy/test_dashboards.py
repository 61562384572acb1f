"""Every metric a Grafana dashboard, an alert rule or the KEDA scaler queries is one the running
API or a running worker exports: a real stack runs a tiny job, both endpoints are scraped, and
`promtool check metrics` lints both scrapes."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from saeq.client.client import Client
from saeq.specs import HarvestSpec, ModelSpec
from tests.deploy import promtool_or_skip
from tests.fixtures_stack import make_stack
from tests.servers import free_port
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "k8s" / "base" / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
KEDA = ROOT / "k8s" / "components" / "keda" / "scaledobjects.yaml"
# Declared by every worker, with samples only where NVML finds a GPU.
GPU_ONLY = re.compile(r"saeq_worker_gpu_")
REDIS_EXPORTER = re.compile(r"\bredis_memory_(used|max)_bytes\b")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$team": ".*"}


# ------------------------------------------------------------------------------- queries


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of a dashboard."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"{dashboard['uid']}: {p['title']} [{t['refId']}]", t["expr"]))
            walk(p.get("panels", []))  # rows

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"{dashboard['uid']}: variable {var['name']}", _label_values_metric(query)))
    return out


def _label_values_metric(query: str) -> str:
    m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
    assert m, f"unexpected variable query {query!r}"
    return m.group(1)


def all_queries() -> list[tuple[str, str]]:
    queries = [q for path in DASHBOARDS for q in panel_queries(json.loads(path.read_text()))]
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        queries += [(f"alert {r['alert']}", r["expr"]) for r in group["rules"]]
    for doc in yaml.safe_load_all(KEDA.read_text()):
        for t in doc["spec"].get("triggers", []):
            if t["type"] == "prometheus":
                queries.append((f"KEDA {doc['metadata']['name']}", t["metadata"]["query"]))
    return queries


def metric_names(expr: str) -> set[str]:
    """The saeq_* metrics a PromQL expression reads (label values and names left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\bsaeq_[a-zA-Z0-9_]+", expr))


def test_the_dashboards_cover_what_operators_watch():
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert len(titles) == len(DASHBOARDS) >= 3
    queries = " ".join(q for _, q in all_queries())
    for metric in (
        "saeq_queue_depth",
        "saeq_queue_oldest_wait_seconds",
        "saeq_jobs_finished_total",
        "saeq_job_duration_seconds_bucket",
        "saeq_worker_tokens_total",
        "saeq_worker_up",
        "saeq_team_jobs",
        "saeq_worker_gpu_memory_used_bytes",
        "saeq_worker_gpu_utilization_ratio",
        "saeq_api_live_request_seconds_bucket",
        "saeq_team_device_seconds_total",
        "saeq_team_share_ratio",
        "saeq_team_share_target_ratio",
    ):
        assert metric in queries, metric
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"SaeqNoWorkers", "SaeqBacklogGrowing", "SaeqHighFailureRatio"} <= alerts


def test_every_dashboard_query_parses(tmp_path):
    # promtool parses PromQL: each query becomes a recording rule, Grafana's variables filled in.
    promtool = promtool_or_skip()
    rules = []
    for i, (where, expr) in enumerate(all_queries()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr.replace("$labels", "").replace("$value", ""), (where, expr)
        rules.append({"record": f"saeq:query_{i}", "expr": expr})
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    out = subprocess.run(
        [promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------- scrapes


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory, redis_srv, s3_srv) -> dict[str, str]:
    """/metrics of a real API and of a real worker after one tiny harvest."""
    model = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, d_model=32)
    port = free_port()
    stack = make_stack(
        tmp_path_factory.mktemp("stack"), redis_srv, s3_srv, SAEQ_METRICS_PORT=str(port), SAEQ_METRICS_ADDR="127.0.0.1"
    )
    with stack as st, Client(st.url, api_key=st.admin_key, timeout=60) as client:
        spec = HarvestSpec(
            model=ModelSpec(name=str(model)),
            hooks=["blocks.0.hook_resid_post"],
            max_tokens=256,
            context_len=32,
            batch_size=4,
            shard_tokens=128,
        )
        job = client.wait(client.submit(spec)["id"], timeout=120)
        assert job["state"] == "succeeded", job
        worker_url = f"http://127.0.0.1:{port}/metrics"
        return {"api": httpx.get(f"{st.url}/metrics", timeout=10).text, "worker": _get_when_up(worker_url)}


def _get_when_up(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=5).raise_for_status().text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def exported(text: str) -> tuple[set[str], set[str]]:
    """(sample names with at least one sample, families declared without samples)."""
    samples, empty = set(), set()
    for family in text_string_to_metric_families(text):
        names = {s.name for s in family.samples}
        samples |= names
        if not names:
            empty.add(family.name)
    return samples, empty


def test_every_queried_metric_is_exported(scrapes):
    samples, empty = set(), set()
    for text in scrapes.values():
        s, e = exported(text)
        samples, empty = samples | s, empty | e
    assert all(GPU_ONLY.match(name) for name in empty), f"declared without samples: {empty}"
    missing = []
    for where, expr in all_queries():
        names = metric_names(expr)
        if REDIS_EXPORTER.search(expr):  # the redis_exporter sidecar's, not saeq's (test_redis_manifests.py)
            continue
        assert names, f"{where} queries no saeq metric: {expr}"
        for name in names:
            if name not in samples and not (name in empty and GPU_ONLY.match(name)):
                missing.append(f"{where}: {name}")
    assert not missing, "queried but not exported:\n" + "\n".join(missing)


def test_worker_metrics_describe_this_worker(scrapes):
    samples, _ = exported(scrapes["worker"])
    assert {
        "saeq_worker_up",
        "saeq_worker_jobs_running",
        "saeq_worker_job_duration_seconds_count",
        "saeq_worker_tokens_per_second",
        "saeq_worker_artifact_written_bytes_total",
        "saeq_worker_job_run_seconds_total",
    } <= samples
    # Totals by state are the API's (from Redis); a worker does not repeat them.
    assert not any(name.startswith("saeq_jobs") for name in samples)
    for text in scrapes.values():
        text = text.replace("{job_id}", "")  # a route template in the HTTP metrics' handler label
        assert "job_id" not in text and not re.search(r'="[0-9a-f]{32}"', text)


@pytest.mark.parametrize("side", ["api", "worker"])
def test_promtool_check_metrics_passes(scrapes, side):
    out = subprocess.run(
        [promtool_or_skip(), "check", "metrics"], input=scrapes[side], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
