"""The Ingress routes every path the API serves to users: the routes are read from the FastAPI app
itself (saeq_api.main), so a new top-level prefix (as /browse was) cannot be left unreachable."""

from __future__ import annotations

import pytest

from tests.deploy.test_manifests import OVERLAYS, objects

# Served by the API but kept inside the cluster on purpose: Prometheus scrapes /metrics in-cluster.
INTERNAL = {"/metrics"}


def served_paths() -> set[str]:
    from saeq_api.main import create_app

    def walk(routes, prefix=""):
        for r in routes:
            if hasattr(r, "original_router"):  # an included router: its routes under its prefix
                yield from walk(r.original_router.routes, prefix + getattr(r, "prefix", ""))
            else:
                yield prefix + r.path

    return set(walk(create_app().routes))


def routed(path: str, rules: list[dict]) -> bool:
    for p in rules:
        want = p["path"].rstrip("/") or "/"
        if p["pathType"] == "Exact" and path == p["path"]:
            return True
        # Prefix matches whole path elements: /v1 routes /v1/jobs, not /v1x.
        if p["pathType"] == "Prefix" and (want == "/" or path == want or path.startswith(want + "/")):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_routes_every_path_the_api_serves_to_users(overlay):
    paths = {p for p in served_paths() if "/" + p.strip("/").split("/")[0] not in INTERNAL}
    assert any(p.startswith("/browse") for p in paths)  # the browser is among them
    for name, ing in objects(overlay, "Ingress").items():
        rules = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
        missing = sorted(p for p in paths if not routed(p.split("{")[0].rstrip("/") or "/", rules))
        assert not missing, f"{overlay}: Ingress {name} does not route {missing}"
        assert not any(routed(p, rules) for p in INTERNAL), f"{overlay}: {name} exposes {INTERNAL}"
