"""The dev overlay publishes no admin key: none is committed under k8s/, and its render exposes no
Ingress host through which the API's admin routes could be reached."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.test_manifests import ROOT, objects

# An API key as `saeq keys new` writes it (saeq_<16 hex>_<secret>), or any value given to the
# bootstrap variable.
KEY = re.compile(r"saeq_[0-9a-f]{16}_\S+|SAEQ_BOOTSTRAP_ADMIN_KEY\s*[=:]\s*['\"]?[^\s'\"$]")


def committed_k8s_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "k8s"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


def test_the_pattern_finds_the_key_that_used_to_be_committed():
    assert KEY.search("SAEQ_BOOTSTRAP_ADMIN_KEY=saeq_00000000000000de_dev-only-admin-key")
    assert not KEY.search('kubectl create secret ... --from-literal=SAEQ_BOOTSTRAP_ADMIN_KEY="$(saeq keys new)"')


def test_no_admin_key_is_committed_under_k8s():
    files = committed_k8s_files()
    assert files
    leaks = [f"{p}: {m.group(0)}" for p in files for m in KEY.finditer((ROOT / p).read_text(errors="replace"))]
    assert not leaks, leaks


def test_the_dev_render_has_no_admin_key_secret_and_no_ingress_host():
    # Generated Secrets carry a hash suffix (saeq-admin-key-<hash>).
    assert not [n for n in objects("dev", "Secret") if n.startswith("saeq-admin-key")]
    hosts = [r.get("host") for ing in objects("dev", "Ingress").values() for r in ing["spec"]["rules"]]
    assert not hosts, f"the dev overlay exposes the API (admin routes included) at {hosts}"
