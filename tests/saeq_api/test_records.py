"""Job records stay bounded whatever one team submits (issue 15), on real Redis and S3 (no worker:
jobs stay queued): stored-job and submit-rate quotas, large specs kept out of Redis, listings of
summaries, retention and admin purge, an atomic max_queued, and bad parameters answered 422.
Run with `-s` to see the figures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient

from saeq import keys
from saeq.client import cli
from saeq.client.client import Client
from saeq.platform.settings import open_store
from saeq_api.main import create_app

HARVEST = {"kind": "harvest", "max_tokens": 4096}
PROMPT = "p" * 8000
ROUNDS = 200  # submit-and-cancel rounds: about 40 s on two busy cores


@pytest.fixture
def api_with(api, api_settings):
    """`api_with(**settings)`: a client of an API with some settings changed, on the same Redis and
    S3, sending the admin key."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(
            TestClient(create_app(api_settings.model_copy(update=changes)), headers=api.headers)
        )


def _quota(api, team: str, **quota) -> None:
    r = api.put(f"/v1/admin/teams/{team}/quota", json=quota)
    assert r.status_code == 200, r.text


def _submit(api, headers=None, spec=HARVEST, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body}, headers=headers or {})


def _big_steer(api, headers=None, n_prompts: int = 120) -> tuple[dict, list[str]]:
    """A steer spec of n_prompts x 8,000 characters (120: 0.96 MB, just under the 1 MiB body
    limit) on a train job that waits for a harvest; returns (spec, depends_on)."""
    harvest = _submit(api, headers).json()["id"]
    train = {"kind": "train", "activations": {"job_id": harvest, "hook": "blocks.14.hook_resid_post"}}
    r = _submit(api, headers, train, depends_on=[harvest])
    assert r.status_code == 201, r.text
    spec = {
        "kind": "steer",
        "sae": {"job_id": r.json()["id"]},
        "prompts": [PROMPT] * n_prompts,
        "interventions": [{"edits": [{"feature": 1, "mode": "clamp", "value": 5.0}]}],
    }
    return spec, [r.json()["id"]]


def _redis(api_settings) -> redis.Redis:
    return redis.Redis.from_url(api_settings.redis_url)


def _record_bytes(r: redis.Redis, job_ids) -> int:
    """Bytes Redis spends on these jobs' keys (record, events, dependents)."""
    total = 0
    for job_id in job_ids:
        for key in r.scan_iter(f"saeq:job:{job_id}*"):
            total += r.memory_usage(key, samples=0) or 0
    return total


def test_submit_and_cancel_in_a_loop_cannot_grow_redis(api, api_settings):
    member = api.key_for("looper")
    _quota(api, "looper", max_queued=5, max_stored_jobs=40, submits_per_minute=100_000)
    spec, deps = _big_steer(api, member)
    body_bytes = len(json.dumps({"spec": spec, "depends_on": deps}))
    r = _redis(api_settings)
    used_before = r.info("memory")["used_memory"]
    bound = 8 << 20  # 40 records without their specs, and allocator slack; 40 inline specs: 38 MB
    created, refused, ids, started = 0, [], [], time.monotonic()
    for i in range(ROUNDS):
        resp = _submit(api, member, spec, depends_on=deps, name=f"loop {i}")
        if resp.status_code == 201:
            created += 1
            ids.append(resp.json()["id"])
            assert api.post(f"/v1/jobs/{ids[-1]}/cancel", headers=member).json()["state"] == "cancelled"
        else:
            assert resp.status_code == 429, resp.text
            refused.append(resp.json()["detail"])
        growth = r.info("memory")["used_memory"] - used_before
        assert growth < bound, f"Redis grew {growth:,} bytes after {i + 1} submits of {body_bytes:,} bytes"
    seconds = time.monotonic() - started
    stored = r.zcard("saeq:team:looper:jobs")
    print(
        f"\n{ROUNDS} submit-and-cancel of {body_bytes:,}-byte bodies in {seconds:.1f} s: {created} created, "
        f"{len(refused)} refused (429); {stored} records stored; Redis used_memory grew "
        f"{growth:,} bytes (bound {bound:,}); the created jobs' keys hold {_record_bytes(r, ids):,} bytes"
    )
    assert created == 40 - 2  # the harvest and train it steers count too
    assert stored == 40 and len(refused) == ROUNDS - created
    assert "max_stored_jobs=40" in refused[0] and "purge" in refused[0]
    assert api.get("/v1/me", headers=member).json()["stored"] == 40
    full = api.get(f"/v1/jobs/{ids[0]}", headers=member).json()
    assert full["spec"]["prompts"] == [PROMPT] * 120  # the spec is kept whole, outside Redis


def test_submits_beyond_the_rate_get_429_with_retry_after(api):
    member = api.key_for("rapid")
    _quota(api, "rapid", submits_per_minute=5)
    codes = [_submit(api, member).status_code for _ in range(5)]
    refused = _submit(api, member)
    assert codes == [201] * 5 and refused.status_code == 429
    assert "submits_per_minute=5" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert _submit(api, api.key_for("other")).status_code == 201  # another team is not slowed


def test_listings_are_summaries_of_bounded_size_whatever_the_specs_hold(api, api_settings):
    spec, deps = _big_steer(api)
    ids = [_submit(api, spec=spec, depends_on=deps, name=f"big {i}").json()["id"] for i in range(20)]
    listing = api.get("/v1/jobs", params={"limit": 50})
    assert listing.status_code == 200
    jobs = listing.json()["jobs"]
    per_job = len(listing.content) / len(jobs)
    r = _redis(api_settings)
    record = r.memory_usage(f"saeq:job:{ids[0]}", samples=0)
    print(
        f"\nlisting of {len(jobs)} jobs with 0.96 MB specs: {len(listing.content):,} bytes "
        f"({per_job:,.0f} per job); one such record holds {record:,} bytes of Redis"
    )
    assert len(jobs) == 22 and all("spec" not in j for j in jobs)
    assert {j["id"] for j in jobs} >= set(ids) and jobs[0]["name"] == "big 19"
    assert len(listing.content) < 22 * 2048 and record < 20_000
    one = api.get(f"/v1/jobs/{ids[3]}").json()
    assert one["spec"]["prompts"] == [PROMPT] * 120 and one["name"] == "big 3"


def test_max_queued_holds_under_concurrent_submits(api):
    member = api.key_for("racers")
    _quota(api, "racers", max_running=0, max_queued=5, submits_per_minute=1000)  # all of them wait
    barrier, codes = threading.Barrier(40), []

    def submit_once():
        barrier.wait()
        codes.append(_submit(api, member).status_code)

    threads = [threading.Thread(target=submit_once) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\n40 concurrent submits against max_queued=5: {codes.count(201)} created, {codes.count(429)} refused")
    assert sorted(codes) == [201] * 5 + [429] * 35
    assert len(api.get("/v1/jobs", headers=member).json()["jobs"]) == 5


def test_an_idempotency_key_reused_with_another_body_is_refused(api):
    key = {"Idempotency-Key": "k-1"}
    first = _submit(api, key, name="one")
    again = _submit(api, key, name="one")
    other = _submit(api, key, {**HARVEST, "max_tokens": 8192}, name="one")
    renamed = _submit(api, key, name="two")
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    for resp in (other, renamed):
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"][0]
        assert detail["field"] == "Idempotency-Key" and first.json()["id"] in detail["msg"]
    assert len(api.get("/v1/jobs").json()["jobs"]) == 1


def test_bad_list_and_event_parameters_are_422_naming_them(api):
    job = _submit(api).json()["id"]
    for before in ("nan", "inf", "-inf", "NaN"):
        r = api.get("/v1/jobs", params={"before": before})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "query.before"
    for after in ("18446744073709551616-0", "1-18446744073709551616", "9" * 400 + "-0", "1-", "x-1"):
        r = api.get(f"/v1/jobs/{job}/events", params={"after": after})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "query.after"
    events = api.get(f"/v1/jobs/{job}/events", params={"after": "18446744073709551615-18446744073709551615"})
    assert events.status_code == 200 and events.json()["events"] == []


def test_an_event_id_of_other_unicode_digits_is_422_not_a_redis_error(api):
    job = _submit(api).json()["id"]
    for after in ("\u0663-\u0663", "\uff11-0", "1-\u0967"):  # Arabic-Indic, fullwidth, Devanagari
        r = api.get(f"/v1/jobs/{job}/events", params={"after": after})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "query.after"


def test_seeds_beyond_what_torch_takes_are_422_naming_the_field(api):
    train = {"kind": "train", "activations": {"job_id": "0" * 32, "hook": "blocks.14.hook_resid_post"}}
    label = {"kind": "label", "sae": {"job_id": "0" * 32}}
    steer = {
        "kind": "steer",
        "sae": {"job_id": "0" * 32},
        "prompts": ["hi"],
        "interventions": [{"edits": [{"feature": 1, "value": 1.0}]}],
    }
    evaluate = {"kind": "evaluate", "sae": {"job_id": "0" * 32}}
    for spec in (HARVEST, train, label, steer, evaluate):
        for seed in (1 << 63, 1 << 64, -1):
            r = _submit(api, spec={**spec, "seed": seed})
            assert r.status_code == 422, (spec["kind"], seed, r.text)
            assert r.json()["detail"][0]["field"] == "spec.seed", r.text
    assert _submit(api, spec={**HARVEST, "seed": (1 << 63) - 1}).status_code == 201
    live = [
        ("/v1/steer", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ]
    for path, body in live:
        r = api.post(path, json={**body, "seed": 1 << 64})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["field"] == "seed", r.text


def test_a_retried_submit_dispatches_the_job_a_failed_first_attempt_created(api, api_settings):
    """The first request created the job, then died before sending it (a Redis outage past its
    retries, or the API process): the retry with the same key and body sends it."""
    from saeq.platform.dispatch import waiting_dispatches
    from saeq.specs import JobCreate

    body, member = {"spec": HARVEST, "name": "retried"}, api.key_for("retry")
    svc = api.app.state.services
    record, created = svc.registry.create(
        kind="harvest",
        spec=JobCreate.model_validate(body).spec.model_dump(mode="json"),
        queue="gpu",
        depends_on=[],
        name="retried",
        team="retry",
        idempotency_key="k-retry",
        request_digest=hashlib.sha256(JobCreate.model_validate(body).model_dump_json().encode()).hexdigest(),
    )
    assert created and not svc.registry.get(record["id"])["dispatched"]  # what the first attempt left
    again = api.post("/v1/jobs", json=body, headers={**member, "Idempotency-Key": "k-retry"})
    assert again.status_code == 200 and again.json()["id"] == record["id"], again.text
    job = svc.registry.get(record["id"])
    assert job["dispatched"] and job["dispatch_id"] in waiting_dispatches(_redis(api_settings))
    third = api.post("/v1/jobs", json=body, headers={**member, "Idempotency-Key": "k-retry"})  # sent once only
    assert third.status_code == 200 and svc.registry.get(record["id"])["dispatch_id"] == job["dispatch_id"]


def test_a_huge_invalid_body_gets_a_small_answer(api):
    features = {"kind": "label", "sae": {"job_id": "0" * 32}, "features": [-1] * 150_000}  # 0.45 MB
    r = _submit(api, spec=features)
    assert r.status_code == 422
    detail = r.json()["detail"]
    print(f"\n{len(json.dumps({'spec': features})):,}-byte body with 150,000 errors: {len(r.content):,}-byte answer")
    assert len(r.content) < 16_000 and len(detail) == 21
    assert detail[0]["field"] == "spec.features.0"
    assert "149,980 more" in detail[-1]["msg"]
    tag = _submit(api, spec={"kind": "k" * 500_000})
    assert tag.status_code == 422 and len(tag.content) < 4_000 and tag.json()["detail"][0]["field"] == "spec"


def test_ended_jobs_expire_after_the_retention_and_free_the_quota(api, api_with, api_settings):
    member = api.key_for("brief")
    _quota(api, "brief", max_stored_jobs=2)
    api = api_with(job_retention_s=2.0)
    first, running = _submit(api, member).json()["id"], _submit(api, member).json()["id"]
    api.post(f"/v1/jobs/{first}/cancel", headers=member)
    r = _redis(api_settings)
    assert 0 < r.ttl(f"saeq:job:{first}") <= 2 and 0 < r.ttl(f"saeq:job:{first}:events") <= 2
    assert r.ttl(f"saeq:job:{running}") == -1  # a job that has not ended never expires
    assert "max_stored_jobs=2" in _submit(api, member).json()["detail"]
    time.sleep(2.5)
    assert api.get(f"/v1/jobs/{first}", headers=member).status_code == 404
    assert [j["id"] for j in api.get("/v1/jobs", headers=member).json()["jobs"]] == [running]
    assert _submit(api, member).status_code == 201  # the expired record no longer counts


def test_the_reaper_forgets_expired_jobs_and_deletes_their_stored_specs(api, api_with, api_settings):
    quick = api_with(job_retention_s=1.0, reap_every_s=0.5)
    spec, deps = _big_steer(quick, n_prompts=10)
    job = _submit(quick, spec=spec, depends_on=deps).json()["id"]
    store, r = open_store(api_settings), _redis(api_settings)
    assert store.list(keys.job_spec(job))  # 80 KB: kept in the store, not in Redis
    quick.post(f"/v1/jobs/{job}/cancel")
    deadline = time.monotonic() + 30
    while store.list(keys.job_spec(job)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not store.list(keys.job_spec(job))
    assert r.zscore("saeq:team:admin:jobs", job) is None and r.zscore("saeq:jobs", job) is None
    assert not r.exists(f"saeq:job:{job}") and r.zcard("saeq:expiring") == 0
    assert r.zcard("saeq:team:admin:jobs") == 2  # the queued harvest and train stay


def test_admins_purge_ended_jobs_of_a_team(api, api_settings):
    a, b = api.key_for("purged"), api.key_for("kept")
    spec, deps = _big_steer(api, a, n_prompts=10)
    ended = [_submit(api, a, spec, depends_on=deps).json()["id"] for _ in range(3)]
    for job_id in ended:
        api.post(f"/v1/jobs/{job_id}/cancel", headers=a)
    theirs = _submit(api, b).json()["id"]
    api.post(f"/v1/jobs/{theirs}/cancel", headers=b)
    assert api.post("/v1/admin/purge", json={"team": "purged"}, headers=a).status_code == 403
    r = api.post("/v1/admin/purge", json={"team": "purged", "ended_before": "nan"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "ended_before"
    r = api.post("/v1/admin/purge", json={"team": "purged", "ended_before": time.time() - 3600})
    assert r.status_code == 200 and r.json()["purged"] == 0  # none ended that long ago

    store = open_store(api_settings)
    assert all(store.list(keys.job_spec(job_id)) for job_id in ended)  # 80 KB specs: in the store
    r = api.post("/v1/admin/purge", json={"team": "purged"})
    assert r.status_code == 200 and r.json()["purged"] == 3 and sorted(r.json()["job_ids"]) == sorted(ended)
    rd = _redis(api_settings)
    for job_id in ended:
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not list(rd.scan_iter(f"saeq:job:{job_id}*")) and not store.list(keys.job_spec(job_id))
    assert len(api.get("/v1/jobs", headers=a).json()["jobs"]) == 2  # the queued harvest and train
    assert api.get(f"/v1/jobs/{theirs}").json()["state"] == "cancelled"  # another team's: kept


def _cli(api, args: list[str], monkeypatch) -> str:
    # The CLI's own Client, sending its requests through the in-process API.
    client = Client("http://testserver", api_key=api.headers["authorization"].split()[1])
    client.http = api
    monkeypatch.setattr(cli, "_client", lambda ctx: client)
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_saeq_status_prints_names_with_control_characters_escaped(api, monkeypatch):
    job = _submit(api, name="evil\x1b]0;pwned\x07\x1b[2J\u202ename").json()["id"]
    out = _cli(api, ["status"], monkeypatch)
    assert job in out and "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\u202ename" in out


def test_saeq_purge_command(api, monkeypatch):
    job = _submit(api).json()["id"]
    api.post(f"/v1/jobs/{job}/cancel")
    out = _cli(api, ["purge", "--team", "admin"], monkeypatch)  # the bootstrap key's team
    assert "purged 1 ended job" in out and api.get(f"/v1/jobs/{job}").status_code == 404
