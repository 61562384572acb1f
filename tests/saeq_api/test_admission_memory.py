"""Memory-aware admission through the API on real Redis and S3 (no worker runs; the pools' ads are
written as a worker's would be): a job no advertised device can hold is refused with a 422 naming
the field to shrink and both figures; one that fits, or any job while no worker advertises its
queue, is accepted."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform import pools
from saeq.specs.scheduling import WorkerAd

HOOK = "blocks.14.hook_resid_post"
GIB = 1 << 30


def _advertise(api_settings, memory_bytes: int, *, queue: str = "gpu", ttl_s: float = 60.0, count: int = 1) -> None:
    r = redis.Redis.from_url(api_settings.redis_url, decode_responses=True)
    ad = WorkerAd(
        worker=f"node:{memory_bytes}",
        queue=queue,
        device="cuda",
        device_name="test card",
        memory_bytes=memory_bytes,
        count=count,
        slots=1,
        updated_at=time.time(),
    )
    pools.advertise(r, ad, ttl_s=ttl_s)


def _submit(api, spec: dict, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body})


def _refusal(resp) -> dict:
    assert resp.status_code == 422, resp.text[:500]
    return resp.json()["detail"][0]


def _train(harvest_id: str, **fields) -> dict:
    return {"kind": "train", "activations": {"job_id": harvest_id, "hook": HOOK}, "total_tokens": 1 << 20, **fields}


@pytest.fixture
def harvest_id(api) -> str:
    resp = _submit(api, {"kind": "harvest", "max_tokens": 4096})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_without_ads_nothing_is_refused_for_memory(api, harvest_id):
    resp = _submit(api, _train(harvest_id, saes=[{"d_sae": 1 << 20, "k": 32}]), depends_on=[harvest_id])
    assert resp.status_code == 201, resp.text


def test_an_sae_too_wide_for_every_device_is_refused_naming_its_width(api, api_settings, harvest_id):
    _advertise(api_settings, 4 * GIB)
    _advertise(api_settings, 2 * GIB)
    # 576 x 2^20 latents: weights, grads and Adam's moments are 4 x 4.5 GiB, a batch's latents 3 GiB
    spec = _train(harvest_id, saes=[{"d_sae": 1 << 20, "k": 32}], batch_size=256)
    detail = _refusal(_submit(api, spec, depends_on=[harvest_id]))
    assert detail["field"] == "spec.saes.0.d_sae"
    assert detail["loc"] == ["body", "spec", "saes", "0", "d_sae"]
    assert "exceeds the largest device on queue 'gpu' (4.00 GiB" in detail["msg"]
    estimated = float(detail["msg"].split("estimated peak memory ")[1].split(" GiB")[0])
    assert 20.0 < estimated < 23.0, detail["msg"]
    # the demo's width fits
    resp = _submit(api, _train(harvest_id, saes=[{"expansion_factor": 8, "k": 32}]), depends_on=[harvest_id])
    assert resp.status_code == 201, resp.text


def test_a_batch_too_large_is_refused_naming_the_batch_size(api, api_settings, harvest_id):
    _advertise(api_settings, 4 * GIB)
    spec = _train(harvest_id, batch_size=1 << 20)
    detail = _refusal(_submit(api, spec, depends_on=[harvest_id]))
    assert detail["field"] == "spec.batch_size"


def test_a_harvest_refused_on_a_small_device_names_the_model_dtype(api, api_settings):
    _advertise(api_settings, 256 << 20)  # SmolLM2's float32 weights alone are 513 MiB
    detail = _refusal(_submit(api, {"kind": "harvest", "max_tokens": 4096}))
    assert detail["field"] == "spec.model.dtype"
    assert "spec.model.dtype first" in detail["msg"] and "model_weights 0.50" in detail["msg"]
    _advertise(api_settings, GIB)  # a bigger worker joins: the same job is admitted
    assert _submit(api, {"kind": "harvest", "max_tokens": 4096}).status_code == 201


def test_an_expired_ad_no_longer_gates(api, api_settings):
    # 3 s: a submit on a loaded CI machine took longer than the 0.3 s this had, so the ad was gone.
    _advertise(api_settings, 256 << 20, ttl_s=3.0)
    assert _submit(api, {"kind": "harvest", "max_tokens": 4096}).status_code == 422
    time.sleep(3.5)
    assert _submit(api, {"kind": "harvest", "max_tokens": 4096}).status_code == 201


def test_ads_of_other_queues_do_not_gate(api, api_settings):
    _advertise(api_settings, 1 << 20, queue="steer")
    assert _submit(api, {"kind": "harvest", "max_tokens": 4096}).status_code == 201
