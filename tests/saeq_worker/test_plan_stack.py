"""Acceptance 4 of issue 18: a plan of a job that ran before predicts its wall time from that run.
A tiny harvest and a tiny train through the real API, worker, Redis and S3 (the module's fixtures),
then plans of the same specs: their basis names those jobs and their rate is the observed one."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_plans_of_jobs_that_ran_predict_their_wall_time(client_module, harvest_job, train_job):
    for job in (harvest_job, train_job):
        assert job["state"] == "succeeded"
        observed_s = job["finished_at"] - job["started_at"]
        rate = job["progress"]["figures"]["tokens"] / observed_s
        plan = client_module.plan(job["spec"])
        print(
            f"{job['kind']}: observed {observed_s:.2f} s, predicted {plan['wall_s']:.2f} s "
            f"({plan['wall_s'] / observed_s - 1:+.1%}); basis: {plan['basis_text']}"
        )
        assert job["id"] in plan["basis"]["job_ids"]
        assert plan["basis"]["median_tokens_per_s"] == pytest.approx(rate, rel=1e-6)
        assert plan["wall_s"] == pytest.approx(plan["tokens"] / rate, rel=1e-6)
        assert abs(plan["wall_s"] - observed_s) <= 0.25 * observed_s
        assert plan["verdict"]["allowed"] and plan["gpu_s"] == pytest.approx(plan["wall_s"], rel=1e-6)


def test_a_plan_without_history_says_so(client_module, harvest_job):
    unseen = {**harvest_job["spec"], "context_len": 1024, "max_tokens": 4096}  # another size bucket
    plan = client_module.plan(unseen)
    assert plan["wall_s"] is None and plan["basis"] is None
    assert plan["basis_text"].startswith("no finished harvest job on model ")
    assert plan["basis_text"].endswith("context_len 1024-2047 to go on")
