"""The absorption check in an evaluate job, through the API and a real worker on the tiny model:
the manifest's summary, the report's table and `saeq report` carry it with its intervals, and a bad
value is refused at submit naming spec.checks.absorption.*."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from saeq.client.client import ApiError
from saeq.specs import EvaluateSpec

pytestmark = pytest.mark.integration

# min_probe_f1 0: the tiny model is random, so no letter would pass a real probe threshold.
ABSORPTION = {"letters": "abcps", "words_per_letter": 8, "n_examples": 2, "max_k": 3, "min_probe_f1": 0.0}
ONLY_ABSORPTION = {"specificity": None, "sensitivity": None, "completeness": None, "probing": None}


def test_evaluate_reports_absorption(client_module, train_job, tmp_path):
    client = client_module
    spec = EvaluateSpec.model_validate(
        {"sae": {"job_id": train_job["id"]}, "max_tokens": 512, "checks": {**ONLY_ABSORPTION, "absorption": ABSORPTION}}
    )
    done = client.wait(client.submit(spec)["id"], timeout=300)
    summary = client.manifest(done["id"])["checks"]
    assert set(summary) == {"absorption"}
    ab = summary["absorption"]
    assert 1 <= ab["n_letters"] <= 5 and ab["n_letters"] + ab["n_letters_left_out"] == 5
    assert (
        ab["mean_absorption_fraction_ci"]["unit"] == "words" and ab["mean_absorption_fraction_ci"]["n"] == ab["n_words"]
    )
    assert 0.0 <= ab["mean_absorption_fraction"] <= 1.0 and 0.0 <= ab["mean_full_absorption_rate"] <= 1.0
    assert ab["n_prompt_tokens"] > 0 and ab["n_sinks_left_out"] >= 0

    files = {f.name: f for f in client.download(done["id"], tmp_path, prefix="report/")}
    doc = json.loads(files["metrics.json"].read_text())["checks"]["absorption"]
    assert doc["spec"]["letters"] == "abcps" and {r["letter"] for r in doc["letters"]} <= set("abcps")
    for r in doc["letters"]:
        assert r["n_train_words"] + r["n_test_words"] <= 8
        if r["included"] and r["n_probe_positive"]:
            assert r["main_features"] and all(0 <= f < 256 for f in r["main_features"])
            assert r["full_absorption_rate"]["method"] == "wilson"
    page = files["report.md"].read_text()
    assert "## Checks: specificity, sensitivity, completeness, sparse probing, absorption" in page
    assert "**absorption** per letter" in page and "| letter | probe F1 | main latents |" in page

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "saeq.client.cli",
            "--url",
            client.url,
            "--api-key",
            client.api_key,
            "report",
            done["id"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"absorption, first letter ({ab['n_letters']} letters" in cli.stdout
    assert f"(n={ab['n_words']} words" in cli.stdout


def test_a_bad_absorption_value_is_refused_naming_the_field(client_module, train_job):
    for bad, field in [({"letters": "aa"}, "letters"), ({"words_per_letter": 1}, "words_per_letter")]:
        with pytest.raises(ApiError) as e:
            client_module.submit(
                {
                    "kind": "evaluate",
                    "sae": {"job_id": train_job["id"]},
                    "checks": {**ONLY_ABSORPTION, "absorption": bad},
                }
            )
        assert e.value.status == 422 and f"absorption.{field}" in str(e.value)
