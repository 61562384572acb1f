"""Calibrated strengths through the API and a real worker: a steer job with `calibrate` writes each
feature's choice (report/calibration.json, named by the manifest); live steering and the chat
endpoint use it when an edit gives no value; the browser's feature page shows it."""

from __future__ import annotations

import json

import httpx
import pytest

from saeq.specs import LabelSpec, SteerSpec

pytestmark = pytest.mark.integration


def test_a_calibrated_strength_is_stored_used_by_live_steering_and_shown(stack, client_module, train_job):
    client = client_module
    label = client.submit(
        LabelSpec.model_validate(
            {
                "sae": {"job_id": train_job["id"]},
                "index_tokens": 2048,
                "features": [3, 4],
                "min_activating": 1,
                "explainers": [{"backend": "metadata"}],
                "judge": None,
                "scorers": ["embedding"],
                "n_explain_examples": 2,
                "n_score_examples": 2,
            }
        )
    )
    calibrate = {"features": [3], "mode": "add", "multiples": [0.5, 4.0, 32.0], "concept_gain": 0.0, "max_kl": None}
    spec = SteerSpec.model_validate(
        {
            "sae": {"job_id": train_job["id"]},
            "label_job": label["id"],
            "prompts": ["The capital of France", "Cats are", "In the morning", "A river runs"],
            "chat": False,
            "max_new_tokens": 6,
            "calibrate": calibrate,
        }
    )
    done = client.wait(client.submit(spec, depends_on=[label["id"]])["id"], timeout=300)
    manifest = client.manifest(done["id"])
    (entry,) = manifest["calibration"]
    records = {r["feature"]: r for r in client.labels(label["id"])}
    assert entry["feature"] == 3 and entry["label"] == records[3]["label"] and entry["label_job"] == label["id"]
    # concept_gain 0 and no budget: the smallest multiple already qualifies.
    assert entry["met"] and entry["multiple"] == 0.5
    assert entry["value"] == pytest.approx(0.5 * records[3]["max_activation"])
    body = json.loads(client.read(done["id"], "report/calibration.json"))
    (cal,) = body["features"]
    assert manifest["calibration_key"].endswith("report/calibration.json") and len(cal["sweep"]) == 1
    assert sorted(cal["fit_prompts"] + cal["held_out_prompts"]) == [0, 1, 2, 3]
    assert cal["baseline"]["mode"] == "clamp"
    assert cal["baseline"]["value"] == pytest.approx(2 * records[3]["max_activation"])
    assert cal["calibrated"]["concept_gain"]["n"] == 2 and cal["calibrated"]["concept_gain"]["unit"] == "prompts"

    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    with httpx.Client(base_url=stack.url, timeout=120, headers=headers) as http:
        base = {"sae": {"job_id": train_job["id"]}, "prompt": "Hello", "chat": False, "max_new_tokens": 4}
        r = http.post("/v1/steer", json=base | {"interventions": [{"feature": 3}]})
        assert r.status_code == 200, r.text
        (used,) = r.json()["calibrated"]
        assert used["value"] == pytest.approx(entry["value"]) and used["mode"] == "add"
        assert used["steer_job"] == done["id"]
        explicit = http.post("/v1/steer", json=base | {"interventions": [{"feature": 3, "value": entry["value"]}]})
        assert explicit.json()["steered"] == r.json()["steered"] and "calibrated" not in explicit.json()
        # no calibration for feature 4, or one for another mode: refused, naming the value to give
        r = http.post("/v1/steer", json=base | {"interventions": [{"feature": 4}]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "interventions.0.value"
        r = http.post("/v1/steer", json=base | {"interventions": [{"feature": 3, "mode": "clamp"}]})
        assert r.status_code == 422 and "mode add" in r.json()["detail"][0]["msg"]

        chat = {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "steering": {"sae": {"job_id": train_job["id"]}, "interventions": [{"feature": 3}]},
        }
        r = http.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
        assert r.json()["saeq_calibrated"][0]["value"] == pytest.approx(entry["value"])

        page = http.get(f"/v1/browser/labels/{label['id']}/features/3").json()
        assert page["calibration"]["value"] == pytest.approx(entry["value"])
        assert page["calibration"]["steer_job"] == done["id"]
        assert http.get(f"/v1/browser/labels/{label['id']}/features/4").json()["calibration"] is None
