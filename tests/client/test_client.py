"""saeq.Client's retries over a fake transport: which requests it repeats, for how long, and what
it raises once it gives up. No servers: milliseconds."""

from __future__ import annotations

import httpx
import pytest

from saeq.client.client import ApiError, Client

JOB_ID = "0" * 32


def fake_api(answers: list[httpx.Response | Exception]) -> tuple[Client, list[httpx.Request]]:
    """A Client whose requests get `answers` in turn (the last one again once they run out)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://api.test", api_key="saeq_x")
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handle))
    return client, seen


def unavailable() -> httpx.Response:
    return httpx.Response(503, json={"detail": "Redis unreachable"}, headers={"Retry-After": "0"})


def test_a_get_rides_out_an_unavailable_api_and_a_dropped_connection():
    client, seen = fake_api(
        [unavailable(), httpx.ConnectError("refused"), httpx.Response(200, json={"id": JOB_ID, "state": "queued"})]
    )
    assert client.get(JOB_ID)["state"] == "queued"
    assert len(seen) == 3


def test_a_post_other_than_submit_is_not_repeated():
    client, seen = fake_api([unavailable(), httpx.Response(200, json={"state": "cancelled"})])
    with pytest.raises(ApiError) as e:
        client.cancel(JOB_ID)
    assert e.value.status == 503 and len(seen) == 1


def test_a_submit_is_repeated_with_the_same_idempotency_key():
    client, seen = fake_api([httpx.ReadTimeout("slow"), httpx.Response(201, json={"id": JOB_ID})])
    assert client.submit({"kind": "harvest"})["id"] == JOB_ID
    assert len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]


def test_past_the_deadline_the_last_answer_or_error_is_raised():
    client, seen = fake_api([unavailable()])
    client.retry_for_s = 0.3
    with pytest.raises(ApiError) as e:
        client.get(JOB_ID)
    assert e.value.status == 503 and "Redis unreachable" in str(e.value) and len(seen) >= 2

    client, _ = fake_api([httpx.ConnectError("refused")])
    client.retry_for_s = 0.3
    with pytest.raises(httpx.ConnectError):
        client.get(JOB_ID)


def test_a_refusal_is_not_repeated_and_names_the_field():
    detail = [{"loc": ["body", "spec", "max_tokens"], "field": "spec.max_tokens", "msg": "too large"}]
    client, seen = fake_api([httpx.Response(403, json={"detail": detail})])
    with pytest.raises(ApiError, match=r"HTTP 403: spec.max_tokens: too large"):
        client.get(JOB_ID)
    assert len(seen) == 1


def test_read_names_an_artifact_by_its_path_in_the_job():
    key = f"jobs/{JOB_ID}/labels/labels.jsonl"
    arts = {
        "job_id": JOB_ID,
        "published": True,
        "manifest_key": None,
        "artifacts": [{"key": key, "size": 3, "url": "http://s3.test/x"}],
    }
    client, _ = fake_api([httpx.Response(200, json=arts)])
    with pytest.raises(ApiError, match="has no artifact labels/missing.jsonl"):
        client.read(JOB_ID, "labels/missing.jsonl")
    client, seen = fake_api([httpx.Response(404, json={"detail": "no job 'nope'"})])
    with pytest.raises(ApiError) as e:  # a bad id is the API's 404, as before
        client.read("nope", "labels/labels.jsonl")
    assert e.value.status == 404 and len(seen) == 1
