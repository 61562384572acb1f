"""A spec too large for its Redis record lives in the object store, and a real worker still runs
the job from it; the record's listing entry stays a summary."""

from __future__ import annotations

import pytest
import redis

from saeq.platform.registry import INLINE_SPEC_BYTES
from saeq.specs import SteerSpec

pytestmark = pytest.mark.integration


def test_a_job_whose_spec_lives_in_the_store_runs(stack, client_module, train_job):
    # 32 sets of 16 edits: about 30 KB of spec, for 32 one-token completions.
    sets = [
        {"name": f"set{i}", "edits": [{"feature": f, "mode": "add", "value": 0.5 * i} for f in range(16)]}
        for i in range(32)
    ]
    spec = SteerSpec(
        sae={"job_id": train_job["id"]}, prompts=["Cats are"], chat=False, max_new_tokens=1, interventions=sets
    )
    assert len(spec.model_dump_json()) > INLINE_SPEC_BYTES
    job = client_module.submit(spec)
    stored = redis.Redis.from_url(stack.redis_url, decode_responses=True).hmget(
        f"saeq:job:{job['id']}", "spec", "spec_key"
    )
    assert stored == ["null", f'"specs/{job["id"]}.json"']  # not in Redis: in the store
    done = client_module.wait(job["id"], timeout=300)
    assert done["state"] == "succeeded", done["error"]
    assert done["spec"]["interventions"] == spec.model_dump(mode="json")["interventions"]
    assert client_module.manifest(job["id"])["n_completions"] == 32
    listed = next(j for j in client_module.list(kind="steer") if j["id"] == job["id"])
    assert "spec" not in listed and listed["state"] == "succeeded"
