"""The Redis keys are deployed data: each one saeq.platform.redis_keys builds is byte-identical to the
string the registry, teams and live requests wrote before the keys moved into one module."""

from __future__ import annotations

from saeq.platform import live, redis_keys

J, T = "0123456789abcdef0123456789abcdef", "lab"


def test_job_keys_are_unchanged():
    assert redis_keys.job(J) == f"saeq:job:{J}"
    assert redis_keys.JOB_PREFIX == "saeq:job:"
    assert redis_keys.job_events(J) == f"saeq:job:{J}:events"
    assert redis_keys.job_lease(J) == f"saeq:job:{J}:lease"
    assert redis_keys.job_dependents(J) == f"saeq:job:{J}:dependents"
    assert (redis_keys.ALL_JOBS, redis_keys.RUNNING, redis_keys.FINISHED) == (
        "saeq:jobs",
        "saeq:running",
        "saeq:finished",
    )
    assert (redis_keys.DISPATCHED, redis_keys.EXPIRING, redis_keys.SPECS_IN_STORE) == (
        "saeq:dispatched",
        "saeq:expiring",
        "saeq:specs_in_store",
    )
    assert redis_keys.JOB_RETENTION == "saeq:settings:job_retention_s"
    assert redis_keys.REAPER_ENDED_SEEN == "saeq:reaper:ended_seen"
    assert redis_keys.idempotency(T, "k1") == "saeq:idem:lab:k1"
    assert redis_keys.stats("duration") == "saeq:stats:duration"
    assert redis_keys.lock("reaper") == "saeq:lock:reaper"


def test_team_upload_and_key_keys_are_unchanged():
    for what in ("jobs", "open", "active", "waiting", "ended", "submits", "uploads", "upload_bytes", "upload_order"):
        assert redis_keys.team(T, what) == f"saeq:team:lab:{what}"
    assert redis_keys.upload_owner("u1") == "saeq:upload:u1"
    assert (redis_keys.TEAMS, redis_keys.API_KEYS, redis_keys.DEFAULT_QUOTA) == (
        "saeq:teams",
        "saeq:keys",
        "saeq:quota:default",
    )
    assert redis_keys.api_key("00ff00ff00ff00ff") == "saeq:key:00ff00ff00ff00ff"
    assert redis_keys.team_quota(T) == "saeq:quota:team:lab"


def test_live_keys_are_unchanged_and_live_keeps_its_names():
    assert live.slots_key(T) == "saeq:live:slots:lab"
    assert live.rate_key(T) == "saeq:live:rate:lab"
    assert live.queue_key(T) == "saeq:live:queue:lab"
    assert (live.TURNS_KEY, live.TURN_KEY, live.OUTCOMES_KEY) == (
        "saeq:live:turns",
        "saeq:live:turn",
        "saeq:live:outcomes",
    )
    assert live.cancel_key("r1") == "saeq:live:cancel:r1"
    assert live.reply_key("r1") == "saeq:live:reply:r1"


def test_job_count_keys_are_unchanged():
    assert (redis_keys.COUNT_KIND_STATE, redis_keys.COUNT_TEAM_STATE) == (
        "saeq:count:kind_state",
        "saeq:count:team_state",
    )
    assert (redis_keys.COUNT_EXPIRING, redis_keys.COUNT_VERSION) == ("saeq:count:expiring", "saeq:count:version")
    assert redis_keys.queue_sent("gpu") == "saeq:queue:gpu:sent"
