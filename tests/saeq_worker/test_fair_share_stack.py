"""Fair share on a real stack (uvicorn API, ONE Celery worker with one slot, Redis, S3): two teams
of weights 1 and 3, 60 or more identical tiny harvests each (more when jobs are short), submitted
while a blocker holds the slot, get CPU-seconds within 10% of 1:3 for as long as both have jobs waiting, and at every dispatch the
light team's seconds stay within one job length of its quarter share (the scheduler's own bound,
which holds at any load); a third team arriving late starts its first job within one job length."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time

import httpx
import pytest

from saeq.client.client import Client
from saeq.specs import HarvestSpec, ModelSpec
from tests.fixtures_stack import make_stack
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

MIN_JOBS, MAX_JOBS = 60, 240
"""Per team. With 10 (the issue's count) the light team runs ~3 jobs while both wait, and the
scheduler's bound (within one job of its share) is ~30% of its seconds: the 10% held idle and
failed under load (0.20 in CI). With 60 it runs ~20, one job is 5%: 0.31-0.34 on loaded cores."""
LIGHT_SECONDS = 3.0
"""What the light team should run while both wait. On a fast idle machine a job takes 0.04 s and
the odd one 0.25 s (a pause of the machine, not of the scheduler): with 60 jobs light runs ~1.2 s
and one such job at the window's end moves its ratio by ~20% (0.381 in CI). So the count follows
the measured job length: light runs >= 3 s, >= 12 of the slowest jobs seen, and 60 at least."""


def jobs_per_team(job_s: float) -> int:
    """Light runs a third of its jobs while both wait (heavy's run out first at 3x its rate)."""
    return max(MIN_JOBS, min(MAX_JOBS, math.ceil(3 * LIGHT_SECONDS / max(job_s, 1e-3))))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    # Never recycle the worker's child: the recycle (every 50 tasks by default) stalls the slot
    # ~4 s and makes the next job cold (~40x a job), one job out of line that this test would
    # see as unfairness.
    with make_stack(tmp_path_factory.mktemp("fair"), redis_srv, s3_srv, SAEQ_WORKER_MAX_TASKS_PER_CHILD="0") as st:
        yield st


def new_team(stack, team: str, weight: float) -> str:
    """An API key of a new team whose quota gives it `weight` in the fair share."""
    out = subprocess.run(
        [sys.executable, "-m", "saeq.client.cli", "--url", stack.url, "--api-key", stack.admin_key]
        + ["keys", "create", team, "--name", team],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    answer = httpx.put(
        f"{stack.url}/v1/admin/teams/{team}/quota",
        # Up to MAX_JOBS submits a team in well under a minute: the default quota (120 a minute,
        # 200 queued) refused the 121st when jobs were short (CI of 573f9b8: HTTP 429).
        json={"share_weight": weight, "submits_per_minute": 4 * MAX_JOBS, "max_queued": 4 * MAX_JOBS},
        headers={"Authorization": f"Bearer {stack.admin_key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return out.stdout.strip()


def harvest(model, max_tokens: int) -> HarvestSpec:
    return HarvestSpec(
        model=ModelSpec(name=str(model)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=max_tokens,
        context_len=64,
        batch_size=4,
        shard_tokens=512,
    )


def overlap(job: dict, start: float, end: float) -> float:
    """Seconds of the job's run inside [start, end]."""
    return max(0.0, min(job["finished_at"] or end, end) - max(job["started_at"], start))


def test_two_teams_share_one_slot_by_weight_and_a_late_team_starts_within_a_job(stack, tmp_path):
    model = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=32)
    light_key, heavy_key, late_key = (new_team(stack, t, w) for t, w in (("light", 1), ("heavy", 3), ("late", 1)))
    with (
        Client(stack.url, api_key=stack.admin_key, timeout=60) as admin,
        Client(stack.url, api_key=light_key, timeout=60) as light,
        Client(stack.url, api_key=heavy_key, timeout=60) as heavy,
        Client(stack.url, api_key=late_key, timeout=60) as late,
    ):
        # A first run of the spec: the first job of a spec pays start-up costs (~2x a job on a
        # loaded machine). Left to a team, that one job alone moves the 1:3 by ~30% (the team's
        # next job is costed at its average attempt), so warm up once and keep the 20 identical.
        spec = harvest(model, 2048)
        assert admin.wait(admin.submit(spec)["id"], timeout=120)["state"] == "succeeded"
        warm = admin.wait(admin.submit(spec)["id"], timeout=120)  # the length of a warm job
        assert warm["state"] == "succeeded"
        n_jobs = jobs_per_team(warm["finished_at"] - warm["started_at"])
        # The blocker holds the one slot while both teams submit: from then on both wait. 131,072
        # tokens outlasted 2 x 60 submits on every machine so far; it grows with the count, 1.5x.
        blocker = admin.submit(harvest(model, int(131072 * 1.5 * n_jobs / MIN_JOBS)))["id"]
        ids = {"light": [], "heavy": []}
        for _ in range(n_jobs):
            ids["light"].append(light.submit(spec)["id"])
            ids["heavy"].append(heavy.submit(spec)["id"])
        both_waiting_at = time.time()
        assert admin.get(blocker)["state"] != "succeeded", "the blocker ended before both teams waited"

        late_id = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            jobs = {t: [admin.get(i) for i in job_ids] for t, job_ids in ids.items()}
            started = sum(j["started_at"] is not None for js in jobs.values() for j in js)
            if late_id is None and started >= 2 * n_jobs - 6:  # late: with 6 jobs still waiting
                late_id = late.submit(spec)["id"]
            if all(j["state"] == "succeeded" for js in jobs.values() for j in js) and late_id is not None:
                break
            time.sleep(1.0)
        assert late_id is not None
        late_job = late.wait(late_id, timeout=120)
        assert late_job["state"] == "succeeded"
        jobs = {t: [admin.get(i) for i in job_ids] for t, job_ids in ids.items()}

    runs = [j["finished_at"] - j["started_at"] for js in jobs.values() for j in js]
    job_length = statistics.median(runs)
    # Both wait until the first team's last job starts: its waiting line is empty from then.
    first_out = min(max(j["started_at"] for j in js) for js in jobs.values())
    used = {t: sum(overlap(j, both_waiting_at, first_out) for j in js) for t, js in jobs.items()}
    ratio = used["light"] / used["heavy"]
    for t, js in jobs.items():
        print(
            t, [(round(j["started_at"] - both_waiting_at, 2), round(j["finished_at"] - j["started_at"], 2)) for j in js]
        )
    # The scheduler's own promise, which holds at every dispatch whatever the machine's load: the
    # light team's seconds never stray from their share (1/4) of both teams' seconds by more than
    # the job running when the counts were last brought level, one job length.
    one_job = max(runs)
    starts = sorted(
        j["started_at"] for js in jobs.values() for j in js if both_waiting_at <= j["started_at"] <= first_out
    )
    lags = []
    for t in starts:
        at_t = {team: sum(overlap(j, both_waiting_at, t) for j in js) for team, js in jobs.items()}
        lags.append(at_t["light"] - (at_t["light"] + at_t["heavy"]) / 4)
    print(f"light's lag behind its share at each of {len(starts)} dispatches: {[round(x, 2) for x in lags]}")
    assert len(starts) >= n_jobs, starts
    assert max(abs(x) for x in lags) <= one_job, (lags, one_job)

    print(
        f"\nCPU-seconds while both waited: {used}, light/heavy {ratio:.3f} (target 0.333), "
        f"{n_jobs} jobs a team, job {job_length:.2f} s"
    )
    assert abs(ratio - 1 / 3) <= 0.1 / 3, used

    waited = late_job["started_at"] - late_job["created_at"]
    print(f"late team's first job started {waited:.2f} s after its submit (one job: {job_length:.2f} s)")
    assert waited <= job_length * 1.25 + 1.0  # the job running then ends first; then it goes
