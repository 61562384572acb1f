"""Teams on a real stack (uvicorn API, Celery worker, Redis, S3): keys made with the CLI, a team's
jobs run no more than its quota allows at once, and no key ever reaches a log."""

from __future__ import annotations

import itertools
import subprocess
import sys

import httpx
import pytest

from saeq.client.client import ApiError, Client
from saeq.specs import HarvestSpec, ModelSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


def saeq_cli(stack, key: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "saeq.client.cli", "--url", stack.url, "--api-key", key, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_keys_quota_and_one_job_at_a_time(stack, tmp_path):
    key = saeq_cli(stack, stack.admin_key, "keys", "create", "lab", "--name", "ann").strip()
    assert key.startswith("saeq_")
    assert "lab" in saeq_cli(stack, stack.admin_key, "keys", "list")
    saeq_cli(stack, stack.admin_key, "teams", "set-quota", "lab", "--max-running", "1")
    assert "team lab  role member" in saeq_cli(stack, key, "whoami")

    model = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=32)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=2048,
        context_len=64,
        batch_size=4,
        shard_tokens=512,
    )
    with Client(stack.url, api_key=key, timeout=60) as lab:
        ids = [lab.submit(spec)["id"] for _ in range(3)]
        jobs = [lab.wait(i, timeout=180) for i in ids]
        assert all(j["state"] == "succeeded" and j["team"] == "lab" for j in jobs)
        spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))  # never two at once
        # The admin's own jobs and listings are another team's: the lab key sees none of them.
        assert {j["id"] for j in lab.list()} == set(ids)

    key_id = next(
        line.split()[0] for line in saeq_cli(stack, stack.admin_key, "keys", "list").splitlines() if " lab " in line
    )
    saeq_cli(stack, stack.admin_key, "keys", "revoke", key_id)
    with Client(stack.url, api_key=key) as lab, pytest.raises(ApiError) as e:
        lab.get(ids[0])
    assert e.value.status == 401


def test_keys_never_reach_the_logs(stack):
    with Client(stack.url, api_key=stack.admin_key) as admin:
        member = admin.create_key("quiet")["key"]
    for key in (member, member[:-1] + ("A" if member[-1] != "A" else "B")):  # a valid and a wrong key
        httpx.get(f"{stack.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        httpx.post(
            f"{stack.url}/v1/jobs",
            json={"spec": {"kind": "nope"}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
    logs = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert logs, "the stack wrote no logs"
    for secret in (member, stack.admin_key):
        # saeq_<key id>_<43 url-safe chars>: the secret part may hold "_" itself, so split twice only
        # (the last "_"-piece can be one letter, found in any log)
        assert secret.split("_", 2)[2] not in logs
