"""Every deployment gives the API and the workers a signing key they accept (they refuse to start
without one): the dev overlay's Secret, the prod overlay's Secret made outside git, compose's .env."""

from __future__ import annotations

import base64
import re

from pydantic import SecretStr

from saeq.platform.settings import PlatformSettings
from tests.deploy.test_manifests import ROOT, compose, pod_specs, rendered

SAEQ_PODS = {"saeq-api", "saeq-worker-gpu", "saeq-worker-steer"}


def _problem(key: str) -> str | None:
    return PlatformSettings(signing_key=SecretStr(key)).signing_key_problem()


def test_k8s_api_and_workers_get_a_signing_key_they_accept():
    for overlay in ("dev", "prod"):
        specs = pod_specs(rendered(overlay))
        assert set(specs) >= SAEQ_PODS, overlay
        for name in SAEQ_PODS:
            sources = [
                s["secretRef"]["name"]
                for c in specs[name]["containers"]
                for s in c.get("envFrom", [])
                if "secretRef" in s and not s["secretRef"].get("optional")
            ]
            # (the dev overlay's generator appends a content hash to the name)
            assert any(re.fullmatch(r"saeq-secrets(-\w+)?", s) for s in sources), (overlay, name, sources)
    secret = next(
        d for d in rendered("dev") if d["kind"] == "Secret" and d["metadata"]["name"].startswith("saeq-secrets")
    )
    key = base64.b64decode(secret["data"]["SAEQ_SIGNING_KEY"]).decode()
    assert _problem(key) is None, key
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "SAEQ_SIGNING_KEY=$(openssl rand -hex 32)" in docs  # prod: made outside git, long enough
    assert _problem("0" * 64) is None


def test_compose_requires_a_signing_key_and_refuses_the_examples_placeholder():
    services = compose()["services"]
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert services[name]["environment"]["SAEQ_SIGNING_KEY"] == "${SAEQ_SIGNING_KEY:?set SAEQ_SIGNING_KEY in .env}"
    line = re.search(r"^SAEQ_SIGNING_KEY=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    assert line, ".env.example sets no SAEQ_SIGNING_KEY"
    example = line.group(1)
    assert _problem(example) is not None  # copying .env.example unchanged does not start a forgeable stack
