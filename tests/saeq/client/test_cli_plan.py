"""`saeq plan spec.yaml` against a real API on loopback (real Redis and S3, no worker): the table,
`--json`, a refusal shown as the verdict, and nothing queued."""

from __future__ import annotations

import json

import httpx
import yaml
from click.testing import CliRunner

from saeq.client.cli import main
from saeq.specs import BUILTIN_MODEL
from tests.saeq_api.conftest import api_settings  # noqa: F401  (a fixture: the API's settings)
from tests.saeq_api.test_browser_login import _member_key, served  # noqa: F401  (a fixture)


def test_plan_prints_a_table_and_json_and_queues_nothing(served, tmp_path):  # noqa: F811
    url, admin_key = served
    key = _member_key(url, admin_key, "cli-plan")
    spec_file = tmp_path / "harvest.yaml"
    spec_file.write_text(
        yaml.safe_dump({"kind": "harvest", "max_tokens": 65_536, "hooks": ["blocks.3.hook_resid_post"]})
    )
    run = lambda *args: CliRunner().invoke(main, ["--url", url, "--api-key", key, "plan", *args])

    table = run(str(spec_file))
    assert table.exit_code == 0, table.output
    lines = {line.split("  ")[0]: line for line in table.output.splitlines()}
    assert "65,536" in lines["tokens"]
    assert f"no finished harvest job on model {BUILTIN_MODEL}, context_len 128-255 to go on" in lines["wall time"]
    assert "unknown" in lines["wall time"] and "unknown" in lines["GPU-seconds"]
    assert "MiB" in lines["bytes to store"] and "65,536 tokens x 1 hooks" in lines["bytes to store"]
    assert "would be queued" in lines["quota"]
    assert "MiB" in lines["peak memory"] or "GiB" in lines["peak memory"]

    as_json = run(str(spec_file), "--json")
    assert as_json.exit_code == 0, as_json.output
    plan = json.loads(as_json.output)
    assert plan["kind"] == "harvest" and plan["team"] == "cli-plan" and plan["tokens"] == 65_536
    assert plan["verdict"]["allowed"] is True

    headers = {"Authorization": f"Bearer {admin_key}"}
    httpx.put(f"{url}/v1/admin/teams/cli-plan/quota", json={"max_tokens": 1_000}, headers=headers).raise_for_status()
    refused = run(str(spec_file))
    assert refused.exit_code == 0, refused.output  # a plan, not an error
    assert "refused (403)" in refused.output
    assert "spec.max_tokens: 65,536 tokens exceed team 'cli-plan'" in refused.output

    listed = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()
    assert listed["jobs"] == []


def test_plan_refuses_a_file_that_is_no_spec(served, tmp_path):  # noqa: F811
    url, admin_key = served
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    out = CliRunner().invoke(main, ["--url", url, "--api-key", admin_key, "plan", str(bad)])
    assert out.exit_code != 0 and "expected a mapping" in out.output
