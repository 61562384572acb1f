"""A team's usage against its fair share, as the API shows it: the `saeq_team_share_*` and
`saeq_team_usage_seconds` gauges and `GET /v1/me`'s `share` say what saeq.platform.fair_share
says, on a real Redis."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saeq.platform import fair_share
from saeq.platform.registry import Registry


@pytest.fixture
def api_settings(api_settings):
    """Every scrape fresh: these tests read gauges right after changing usage."""
    return api_settings.model_copy(update={"metrics_cache_s": 0.0})


def gauges(api) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels["team"]): s.value
        for f in text_string_to_metric_families(api.get("/metrics").text)
        for s in f.samples
        if s.name.startswith(("saeq_team_share", "saeq_team_usage"))
    }


def test_gauges_and_whoami_show_each_teams_usage_against_its_share(api, api_settings):
    alpha, beta = api.key_for("alpha"), api.key_for("beta")
    assert api.put("/v1/admin/teams/beta/quota", json={"share_weight": 3.0}).status_code == 200
    registry = Registry.from_url(api_settings.redis_url)
    fair_share.add_usage(registry.r, "alpha", 300.0)
    fair_share.add_usage(registry.r, "beta", 100.0)
    for headers in (alpha, beta):  # a job open each (no worker here: they stay queued)
        assert api.post("/v1/jobs", json={"spec": {"kind": "harvest"}}, headers=headers).status_code == 201

    rows = fair_share.shares(registry)
    me = {team: api.get("/v1/me", headers=h).json()["share"] for team, h in (("alpha", alpha), ("beta", beta))}
    scraped = gauges(api)
    for team in ("alpha", "beta"):
        # Decay runs on between the calls: seconds apart, a window of hours changes nothing at 1e-3.
        assert me[team] == pytest.approx({k: rows[team][k] for k in me[team]}, rel=1e-3)
        assert scraped[("saeq_team_share_ratio", team)] == pytest.approx(rows[team]["share"], rel=1e-3)
        assert scraped[("saeq_team_share_target_ratio", team)] == pytest.approx(rows[team]["target"], rel=1e-3)
        assert scraped[("saeq_team_share_weight", team)] == rows[team]["weight"]
        assert scraped[("saeq_team_usage_seconds", team)] == pytest.approx(rows[team]["usage_s"], rel=1e-3)
    assert me["alpha"]["usage_s"] == pytest.approx(300.0, rel=1e-3)
    assert me["alpha"]["share"] == pytest.approx(0.75, rel=1e-3) and me["beta"]["share"] == pytest.approx(
        0.25, rel=1e-3
    )
    assert me["alpha"]["weight"] == 1.0 and me["beta"]["weight"] == 3.0
    # Weights 1 and 3, both with work: beta is under its target, alpha over.
    assert me["alpha"]["target"] == pytest.approx(0.25) and me["beta"]["target"] == pytest.approx(0.75)
    assert me["alpha"]["active"] and me["beta"]["active"]


def test_a_team_with_no_usage_yet_sees_its_weight_and_nothing_used(api):
    gamma = api.key_for("gamma")
    share = api.get("/v1/me", headers=gamma).json()["share"]
    assert share["usage_s"] == 0 and share["share"] == 0 and share["weight"] == 1.0
    assert share["target"] == 0 and not share["active"]  # no job open: no claim on the GPUs
