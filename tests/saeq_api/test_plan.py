"""`POST /v1/jobs?dry_run=true` against the real API on real Redis and S3 (no worker): the Plan,
status 200, nothing queued or written; the submit's refusals come back as the plan's verdict."""

from __future__ import annotations

import json
from typing import cast

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.registry import Registry
from saeq.specs import BUILTIN_MODEL, ActivationsRef, HarvestSpec, SaeConfig, TrainSpec


def _redis(api_settings) -> redis.Redis:
    return redis.Redis.from_url(api_settings.redis_url, decode_responses=True)


def _snapshot(r: redis.Redis) -> dict[str, object]:
    """Every key and its content: what a dry run must leave as it found it."""
    readers = {
        "hash": r.hgetall,
        "set": r.smembers,
        "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        "string": r.get,
        "list": lambda k: r.lrange(k, 0, -1),
        "stream": r.xrange,
    }
    out: dict[str, object] = {}
    for key in sorted(cast(list[str], r.keys("*"))):
        kind = cast(str, r.type(key))
        out[key] = (kind, readers[kind](key) if kind in readers else None)
    return out


def _plan(api, spec, headers=None, **body):
    return api.post("/v1/jobs", params={"dry_run": "true"}, json={"spec": spec, **body}, headers=headers or {})


def test_a_dry_run_answers_the_plan_and_writes_nothing(api, api_settings):
    spec = HarvestSpec(max_tokens=32_768).model_dump(mode="json")
    headers = api.key_for("planners")
    r = _redis(api_settings)
    before = _snapshot(r)
    resp = _plan(api, spec, headers)
    assert resp.status_code == 200, resp.text
    assert _snapshot(r) == before  # no record, no message, no rate-limit entry
    plan = resp.json()
    assert plan["kind"] == "harvest" and plan["team"] == "planners" and plan["tokens"] == 32_768
    assert plan["wall_s"] is None and plan["gpu_s"] is None and plan["basis"] is None
    assert plan["basis_text"] == f"no finished harvest job on model {BUILTIN_MODEL}, context_len 128-255 to go on"
    assert plan["bytes_to_store"] >= 32_768 * (576 * 2)  # the builtin's d_model, bf16
    memory = plan["peak_memory"]  # saeq.platform.memory_estimate's, on CUDA (no worker advertises)
    assert memory["total_bytes"] == sum(memory["parts"].values()) > 0 and memory["shrink_field"].startswith("spec.")
    assert plan["verdict"] == {"allowed": True, "status": None, "reasons": []}
    assert plan["jobs_ahead"] == 0
    assert api.get("/v1/jobs", headers=headers).json()["jobs"] == []


def test_a_finished_job_alike_is_the_basis(api, api_settings):
    spec = HarvestSpec(max_tokens=32_768).model_dump(mode="json")
    registry = Registry(_redis(api_settings))
    job, _ = registry.create(kind="harvest", spec=spec, queue="cpu", depends_on=[], team="planners")
    registry.finish_unowned(job["id"], "succeeded")
    ended = json.loads(cast(str, registry.r.hget(redis_keys.job(job["id"]), "finished_at")))
    registry.r.hset(redis_keys.job(job["id"]), "started_at", json.dumps(ended - 16.0))
    plan = _plan(api, spec, api.key_for("planners")).json()
    assert plan["wall_s"] == pytest.approx(16.0, rel=1e-6)
    assert plan["basis"]["job_ids"] == [job["id"]] and plan["basis"]["scope"] == "team"
    assert plan["basis_text"].startswith("1 succeeded harvest job on model")


def test_refusals_are_the_verdict_not_an_error(api):
    api.put("/v1/admin/teams/tight/quota", json={"max_tokens": 10_000, "max_queued": 0})
    headers = api.key_for("tight")
    resp = _plan(api, HarvestSpec(max_tokens=20_000).model_dump(mode="json"), headers)
    assert resp.status_code == 200, resp.text
    verdict = resp.json()["verdict"]
    assert not verdict["allowed"] and verdict["status"] == 403  # the per-job quota, checked first
    assert verdict["reasons"][0]["field"] == "spec.max_tokens"
    assert "quota max_queued=0" in verdict["reasons"][1]["message"]  # and the 429 it would meet next

    queued_only = _plan(api, HarvestSpec(max_tokens=5_000).model_dump(mode="json"), headers).json()["verdict"]
    assert queued_only["status"] == 429 and queued_only["reasons"][0]["field"] is None

    train = TrainSpec(activations=ActivationsRef(job_id="0" * 32), saes=[SaeConfig(d_sae=512)]).model_dump(mode="json")
    missing = _plan(api, train, api.key_for("planners")).json()
    assert missing["verdict"]["status"] == 422
    assert missing["verdict"]["reasons"][0]["field"] == "spec.activations.job_id"
    assert missing["tokens"] == train["total_tokens"]  # the plan is still made


def test_a_bad_spec_is_still_a_422(api):
    resp = _plan(api, {"kind": "harvest", "max_tokens": -1})
    assert resp.status_code == 422
