"""A synthetic harvest at submit, on real Redis and S3 (no worker: jobs stay queued): the API takes
`source: synthetic`, refuses a model-only field there naming it, and sizes a train job waiting on
one by the generator's d_model (not the default model's 576) against the team's max_latents."""

from __future__ import annotations

HOOK = "blocks.0.hook_resid_post"


def _submit(api, spec, headers, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body}, headers=headers)


def test_a_train_job_on_a_queued_synthetic_harvest_is_sized_by_the_generator(api):
    team = api.key_for("synth")
    assert api.put("/v1/admin/teams/synth/quota", json={"max_latents": 1000}).status_code == 200
    bad = _submit(api, {"kind": "harvest", "source": "synthetic", "context_len": 64}, team)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "spec.context_len", bad.text
    harvest = {"kind": "harvest", "source": "synthetic", "synthetic": {"d_model": 64}, "hooks": [HOOK]}
    r = _submit(api, harvest, team)
    assert r.status_code == 201, r.text
    harvest_id = r.json()["id"]
    train = {"kind": "train", "activations": {"job_id": harvest_id, "hook": HOOK}, "total_tokens": 8192}
    # 8 x 64 = 512 latents fit under max_latents=1,000 (8 x 576 = 4,608 would not)
    ok = _submit(api, {**train, "saes": [{"expansion_factor": 8}]}, team, depends_on=[harvest_id])
    assert ok.status_code == 201, ok.text
    wide = _submit(api, {**train, "saes": [{"expansion_factor": 16}]}, team, depends_on=[harvest_id])
    assert wide.status_code == 403 and "1,024 latents" in wide.json()["detail"][0]["msg"], wide.text
