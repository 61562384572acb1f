"""Fair share on a real stack (uvicorn API, ONE Celery worker with one slot, Redis, S3): two teams
of weights 1 and 3, 60 or more identical tiny harvests each (more when jobs are short), submitted
while a blocker holds the slot, get CPU-seconds within 10% of 1:3 for as long as both have jobs
waiting, and at every dispatch the light team's seconds stay within one job length of its quarter
share (the scheduler's own bound, which holds at any load); a third team arriving late starts its
first job within one job length. The scenario itself is tests/fair_share_scenario.py, which
bench/fair_share.py runs at the issue's 10 jobs a team."""

from __future__ import annotations

import math

import pytest

from saeq.client.client import Client
from tests.fair_share_scenario import harvest, run_fair_share, warm_job_seconds
from tests.fixtures_stack import make_stack
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

MIN_JOBS, MAX_JOBS = 60, 240
"""Per team. With 10 (the issue's count) the light team runs 3 jobs while both wait, so its ratio
is the sum of 3 job lengths over 9: within 10% of 1:3 only while a job's length varies by less
than ~6%. That holds on an idle machine (bench/fair_share.py runs the issue's 10 a team) and
failed under load (0.20 in a CI run). With 60 it runs ~20, one job is 5%: 0.31-0.34 on loaded
cores."""
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


def test_two_teams_share_one_slot_by_weight_and_a_late_team_starts_within_a_job(stack, tmp_path):
    model = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=32)
    with Client(stack.url, api_key=stack.admin_key, timeout=60) as admin:
        job_s = warm_job_seconds(admin, harvest(model, 2048))
    n_jobs = jobs_per_team(job_s)
    run = run_fair_share(stack.url, stack.admin_key, model, n_jobs=n_jobs, job_tokens=2048, max_submits=4 * MAX_JOBS)
    for team, order in run.orders.items():
        print(team, order)
    print(f"light's lag behind its share at each of {len(run.lags_s)} dispatches: {[round(x, 2) for x in run.lags_s]}")
    print(
        f"\nCPU-seconds while both waited: {run.used_s}, light/heavy {run.ratio:.3f} (target 0.333), "
        f"{n_jobs} jobs a team, job {run.job_length_s:.2f} s"
    )
    print(f"late team's first job started {run.late_wait_s:.2f} s after its submit (one job: {run.job_length_s:.2f} s)")
    # The scheduler's own promise, which holds at every dispatch whatever the machine's load: the
    # light team's seconds never stray from their share (1/4) of both teams' seconds by more than
    # the job running when the counts were last brought level, one job length.
    assert len(run.lags_s) >= n_jobs, run.lags_s
    assert max(abs(x) for x in run.lags_s) <= run.longest_job_s, (run.lags_s, run.longest_job_s)
    assert abs(run.ratio - 1 / 3) <= 0.1 / 3, run.used_s
    assert run.late_wait_s <= run.job_length_s * 1.25 + 1.0  # the job running then ends first; then it goes
