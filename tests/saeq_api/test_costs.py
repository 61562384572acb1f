"""What a job may cost, as a team sees it at submit, on real Redis and S3 (no worker: jobs stay
queued): the costly jobs of the security probe are refused naming the field that drives their cost,
the demo's own jobs pass, cross-field errors name the field, and non-finite numbers are refused."""

from __future__ import annotations

import json

from saeq import keys

HOOK = "blocks.14.hook_resid_post"


def submit(api, spec, headers=None, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body}, headers=headers)


def refusal(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text[:500]
    return resp.json()["detail"][0]


def _harvest(api, headers=None) -> str:
    r = submit(api, {"kind": "harvest", "max_tokens": 4096}, headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _train(api, harvest_id, headers=None) -> str:
    r = submit(
        api,
        {"kind": "train", "activations": {"job_id": harvest_id, "hook": HOOK}, "total_tokens": 8192},
        headers,
        depends_on=[harvest_id],
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_the_probes_costly_jobs_are_refused_naming_what_drives_their_cost(api):
    member = api.key_for("probe")
    harvest_id = _harvest(api, member)
    # 16 SAEs of 2^20 latents each: every one within max_latents, their sum 16x beyond it.
    wide = {
        "kind": "train",
        "activations": {"job_id": harvest_id, "hook": HOOK},
        "total_tokens": 8192,
        "saes": [{"name": f"s{i}", "d_sae": 1 << 20} for i in range(16)],
    }
    d = refusal(submit(api, wide, member, depends_on=[harvest_id]), 403)
    assert d["field"] == "spec.saes" and "16,777,216 latents" in d["msg"] and "max_latents=1,048,576" in d["msg"]
    # 16 hooks of 100M tokens, read 4,096 contexts of 32,768 tokens at a time.
    harvest = {
        "kind": "harvest",
        "hooks": [f"blocks.{i}.hook_resid_post" for i in range(16)],
        "max_tokens": 100_000_000,
        "batch_size": 4096,
        "context_len": 32_768,
        "shard_tokens": 32_768,
    }
    d = refusal(submit(api, harvest, member), 403)
    assert d["field"] == "spec.hooks" and "max_job_cost=1,000,000,000" in d["msg"]
    assert "1,600,000,000" in d["msg"]  # 100M tokens x 16 hooks
    one_hook = {**harvest, "hooks": [HOOK]}  # within the cost, but one forward batch holds 134M tokens
    d = refusal(submit(api, one_hook, member), 403)
    assert d["field"] == "spec.batch_size" and "100,007,936 tokens" in d["msg"]  # 3,052 contexts: all 100M
    # 256 prompts x 32 sets x 16 strengths = 131,072 steered generations of 1,024 tokens.
    train_id = _train(api, harvest_id, member)
    steer = {
        "kind": "steer",
        "sae": {"job_id": train_id},
        "prompts": [f"prompt {i}" for i in range(256)],
        "interventions": [{"edits": [{"feature": i, "value": 1.0}]} for i in range(32)],
        "strengths": [float(s) for s in range(16)],
        "max_new_tokens": 1024,
    }
    d = refusal(submit(api, steer, member, depends_on=[train_id]), 403)
    assert d["field"] == "spec.prompts" and "131,328 generations" in d["msg"]  # each prompt's default too
    assert len(api.get("/v1/jobs", headers=member).json()["jobs"]) == 2  # only the harvest and the train


def test_a_team_quota_bounds_each_kind_of_cost(api):
    small = api.key_for("small")
    assert (
        api.put(
            "/v1/admin/teams/small/quota", json={"max_job_cost": 100_000, "max_batch_tokens": 4096, "max_latents": 5000}
        ).status_code
        == 200
    )
    harvest_id = _harvest(api, small)  # 4,096 tokens x 1 hook
    d = refusal(
        submit(api, {"kind": "harvest", "max_tokens": 60_000, "hooks": [HOOK, "blocks.3.hook_mlp_out"]}, small), 403
    )
    assert d["field"] == "spec.hooks" and "120,000" in d["msg"] and "max_job_cost=100,000" in d["msg"]
    d = refusal(submit(api, {"kind": "harvest", "max_tokens": 8192, "batch_size": 64}, small), 403)
    assert d["field"] == "spec.batch_size" and "8,192 tokens" in d["msg"] and "max_batch_tokens=4,096" in d["msg"]
    # Two SAEs of 2,304 latents (4x576): each and their sum within max_latents; trained on 400k tokens
    # they cost 400,000 x 4,608 / 16,384 = 112,500 token-units.
    two = {
        "kind": "train",
        "activations": {"job_id": harvest_id, "hook": HOOK},
        "total_tokens": 400_000,
        "saes": [{"name": "a", "expansion_factor": 4}, {"name": "b", "expansion_factor": 4}],
    }
    d = refusal(submit(api, two, small, depends_on=[harvest_id]), 403)
    assert d["field"] == "spec.saes" and "112,500" in d["msg"]
    three = {**two, "total_tokens": 8192, "saes": [*two["saes"], {"name": "c", "expansion_factor": 1}]}
    d = refusal(submit(api, three, small, depends_on=[harvest_id]), 403)  # 5,184 latents in all
    assert d["field"] == "spec.saes" and "5,184 latents" in d["msg"] and "max_latents=5,000" in d["msg"]
    d = refusal(submit(api, {"kind": "evaluate", "sae": {"job_id": "0" * 32}, "max_tokens": 40_000}, small), 422)
    assert d["field"] == "spec.sae.job_id"  # references first: a limit never reads another team's job
    train_id = _train(api, harvest_id, small)
    evaluate = {"kind": "evaluate", "sae": {"job_id": train_id}, "max_tokens": 40_000, "checks": None}
    d = refusal(submit(api, evaluate, small, depends_on=[train_id]), 403)  # the model runs 3 times per batch
    assert d["field"] == "spec.max_tokens" and "120,000" in d["msg"]
    wide = {**evaluate, "max_tokens": 8192, "batch_size": 64}  # 64 of the harvest's 128-token contexts
    d = refusal(submit(api, wide, small, depends_on=[train_id]), 403)
    assert d["field"] == "spec.batch_size" and "8,192 tokens" in d["msg"]
    checks = {**evaluate, "max_tokens": 8192, "checks": {"batch_size": 64, "n_docs": 64, "sensitivity": None}}
    d = refusal(submit(api, checks, small, depends_on=[train_id]), 403)
    assert d["field"] == "spec.checks.batch_size" and "8,192 tokens" in d["msg"]
    steer = {
        "kind": "steer",
        "sae": {"job_id": train_id},
        "prompts": ["x" * 400],
        "interventions": [{"edits": [{"feature": 1, "value": 2.0}]}],
        "strengths": [1.0, 2.0, 3.0],
        "max_new_tokens": 1024,
    }
    d = refusal(submit(api, steer, small, depends_on=[train_id]), 403)
    assert d["field"] == "spec.max_new_tokens" and "819,600" in d["msg"]  # 4 x (1,024 x 200 + 100)
    assert submit(api, {**steer, "max_new_tokens": 32}, small, depends_on=[train_id]).status_code == 201


def test_a_label_jobs_explainers_and_judge_and_an_evaluations_checks_count_in_its_cost(api):
    team = api.key_for("labels")
    assert api.put("/v1/admin/teams/labels/quota", json={"max_job_cost": 200_000}).status_code == 200
    train_id = _train(api, _harvest(api, team), team)
    sae = {"sae": {"job_id": train_id}}
    # 131,072 index tokens + 64 features x 24 new tokens x 200 + 64 x 30 judge questions x 256 tokens
    d = refusal(submit(api, {"kind": "label", **sae}, team, depends_on=[train_id]), 403)
    assert d["field"] == "spec.n_score_examples" and "929,792 token-units" in d["msg"], d
    assert "64 features x 30 judge questions x 256 tokens (491,520)" in d["msg"]
    long_labels = {
        "kind": "label",
        **sae,
        "n_most_active": 16,
        "index_tokens": 4096,
        "judge": None,
        "scorers": ["embedding"],
        "explainers": [{"backend": "local", "max_new_tokens": 256}],
    }
    d = refusal(submit(api, long_labels, team, depends_on=[train_id]), 403)  # 16 x 256 x 200 = 819,200
    assert d["field"] == "spec.explainers.0.max_new_tokens" and "819,200" in d["msg"], d
    few = {**long_labels, "explainers": [{"backend": "local"}, {"backend": "metadata"}]}  # 4,096 + 76,800
    assert submit(api, few, team, depends_on=[train_id]).status_code == 201
    # 8,192 tokens x 3 passes, then 1,024 articles x 128 tokens for three checks, 768 for sensitivity
    evaluate = {"kind": "evaluate", **sae, "max_tokens": 8192}
    d = refusal(submit(api, evaluate, team, depends_on=[train_id]), 403)
    assert d["field"] == "spec.checks.n_docs" and "516,096 token-units" in d["msg"], d
    small_checks = {**evaluate, "checks": {"n_docs": 64, "sensitivity": None}}  # 24,576 + 3 x 8,192
    assert submit(api, small_checks, team, depends_on=[train_id]).status_code == 201


def test_max_batch_tokens_applies_once_the_harvests_record_expired(api):
    """An evaluation reads the context length of its SAE's harvest from the train job's manifest,
    which outlives the harvest's record."""
    team = api.key_for("late")
    assert api.put("/v1/admin/teams/late/quota", json={"max_batch_tokens": 4096}).status_code == 200
    r = submit(api, {"kind": "harvest", "max_tokens": 4096, "context_len": 1024}, team)
    harvest_id = r.json()["id"]
    train_id = _train(api, harvest_id, team)
    svc = api.app.state.services
    manifest = keys.manifest(train_id)  # what the train worker publishes (workers/saeq_worker/train.py)
    svc.store.put(
        manifest,
        json.dumps(
            {"kind": "train", "harvest": {"job_id": harvest_id, "context_len": 1024}, "saes": {"sae0": {"d_sae": 4608}}}
        ).encode(),
        content_type="application/json",
    )
    svc.registry.r.hset(f"saeq:job:{train_id}", mapping={"state": '"succeeded"', "manifest_key": json.dumps(manifest)})
    svc.registry.r.delete(f"saeq:job:{harvest_id}")  # its retention ran out
    evaluate = {"kind": "evaluate", "sae": {"job_id": train_id}, "max_tokens": 8192, "batch_size": 8, "checks": None}
    d = refusal(submit(api, evaluate, team), 403)  # 8 contexts of the harvest's 1,024 tokens
    assert d["field"] == "spec.batch_size" and "8,192 tokens" in d["msg"], d
    assert submit(api, {**evaluate, "batch_size": 4}, team).status_code == 201


def test_the_demos_jobs_are_accepted_under_the_default_quota(api):
    member = api.key_for("demo")
    harvest = submit(api, {"kind": "harvest", "hooks": [HOOK], "max_tokens": 262_144}, member)
    assert harvest.status_code == 201, harvest.text
    h = harvest.json()["id"]
    train = submit(
        api,
        {
            "kind": "train",
            "activations": {"job_id": h, "hook": HOOK},
            "total_tokens": 2_457_600,
            "saes": [{"name": "topk-8x-k32", "architecture": "topk", "expansion_factor": 8, "k": 32}],
        },
        member,
        depends_on=[h],
    )
    assert train.status_code == 201, train.text
    t = train.json()["id"]
    label = submit(
        api,
        {"kind": "label", "sae": {"job_id": t}, "n_most_active": 32, "index_tokens": 65_536, "n_score_examples": 8},
        member,
        depends_on=[t],
    )
    assert label.status_code == 201, label.text
    evaluate = submit(
        api,
        {"kind": "evaluate", "sae": {"job_id": t}, "checks": {"label_job": label.json()["id"]}},
        member,
        depends_on=[t, label.json()["id"]],
    )
    assert evaluate.status_code == 201, evaluate.text
    steer = submit(
        api,
        {
            "kind": "steer",
            "sae": {"job_id": t},
            "prompts": ["Tell me about your weekend."] * 4,
            "interventions": [{"edits": [{"feature": 7, "mode": "clamp", "value": 20.0}]}],
            "strengths": [0.5, 1.0, 2.0],
        },
        member,
        depends_on=[t],
    )
    assert steer.status_code == 201, steer.text


def test_cross_field_errors_name_the_field(api):
    h = _harvest(api)
    train = {"kind": "train", "activations": {"job_id": h, "hook": HOOK}, "total_tokens": 8192}
    cases = [
        ({**train, "saes": [{"d_sae": 16, "k": 64}]}, "spec.saes.0.k", "k=64 exceeds d_sae=16"),
        ({**train, "saes": [{"d_sae": 16, "k": 4, "aux_k": 64}]}, "spec.saes.0.aux_k", "aux_k=64 exceeds d_sae=16"),
        ({**train, "saes": [{}, {"architecture": "relu", "k": 8}]}, "spec.saes.1.k", "applies to architecture"),
        ({**train, "saes": [{"name": "a"}, {"name": "a"}]}, "spec.saes.1.name", "duplicate name"),
        ({**train, "batch_size": 16_384}, "spec.total_tokens", "less than one batch"),
        ({**train, "lr_warmup": 0.6, "lr_decay": 0.6}, "spec.lr_decay", "exceed the whole run"),
        ({"kind": "harvest", "hooks": [HOOK, "blocks.40.hook_resid_post"]}, "spec.hooks.1", "has 30 blocks"),
        ({"kind": "harvest", "context_len": 256, "shard_tokens": 128}, "spec.shard_tokens", "at least one context"),
        (
            {"kind": "label", "sae": {"source": "path", "path": "/x"}, "hook": HOOK},
            "spec.model",
            "an imported SAE needs model, corpus",
        ),
        ({"kind": "label", "sae": {"job_id": "0" * 32}, "judge": None}, "spec.scorers", "need a judge"),
        (
            {"kind": "label", "sae": {"job_id": "0" * 32}, "scorers": ["embedding", "embedding"]},
            "spec.scorers",
            "listed twice",
        ),
    ]
    for spec, field, words in cases:
        d = refusal(submit(api, spec), 422)
        assert (d["field"], words in d["msg"]) == (field, True), (spec, d)
    r = api.post(
        "/v1/steer", json={"sae": {"job_id": "0" * 32}, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert refusal(r, 422)["field"] == "messages"
    r = api.post(
        "/v1/steer",
        json={
            "model": {"name": "builtin:smollm2-135m-instruct"},
            "prompt": "hi",
            "interventions": [{"feature": 0, "value": 1.0}],
        },
    )
    assert refusal(r, 422)["field"] == "interventions"


def test_infinity_and_nan_are_refused_in_every_float_field(api):
    h = _harvest(api)
    t = _train(api, h)
    bodies = [
        ('{"spec": {"kind": "harvest", "sink_norm_factor": Infinity}}', "spec.sink_norm_factor"),
        ('{"spec": {"kind": "harvest", "sink_norm_factor": NaN}}', "spec.sink_norm_factor"),
        (
            '{"spec": {"kind": "train", "activations": {"job_id": "JOB"}, "sinks": {"norm_factor": Infinity}}}'.replace(
                "JOB", h
            ),
            "spec.sinks.norm_factor",
        ),
        (
            '{"spec": {"kind": "evaluate", "sae": {"job_id": "JOB"}, "sinks": {"norm_factor": Infinity}}}'.replace(
                "JOB", t
            ),
            "spec.sinks.norm_factor",
        ),
        (
            '{"spec": {"kind": "steer", "sae": {"job_id": "JOB"}, "prompts": ["a"], "strengths": [-Infinity],'
            ' "interventions": [{"edits": [{"feature": 0}]}]}}'.replace("JOB", t),
            "spec.strengths.0",
        ),
        ('{"spec": {"kind": "harvest"}, "time_limit_s": Infinity}', "time_limit_s"),
    ]
    for body, field in bodies:
        r = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        d = refusal(r, 422)
        assert d["field"] == field and "finite" in d["msg"], (body, d)
    r = api.put(
        "/v1/admin/teams/x/quota", content='{"max_time_s": Infinity}', headers={"Content-Type": "application/json"}
    )
    assert refusal(r, 422)["field"] == "max_time_s"
    assert len(api.get("/v1/jobs").json()["jobs"]) == 2  # the harvest and the train only
