"""Every Redis key saeq writes, built in one place. The strings are deployed data: never change one
without a migration. The broker's own lists (Celery's queues, named after the queue) are kombu's,
read in saeq.platform.dispatch; the Lua scripts receive their keys from these functions as KEYS.
"""

from __future__ import annotations

PREFIX = "saeq:"

# ---- jobs ------------------------------------------------------------------------------------


def job(job_id: str, suffix: str = "") -> str:
    """Hash: a job's record, one JSON-encoded value per field. `suffix` names its satellites
    (`job_events`, `job_lease`, `job_dependents`)."""
    return f"{PREFIX}job:{job_id}{suffix}"


JOB_PREFIX = job("")
"""What a record's key is before its id (the create script builds the key of an earlier job)."""


def job_events(job_id: str) -> str:
    """Stream: the job's events (`e`: one JSON entry), capped at ~2000."""
    return job(job_id, ":events")


def job_lease(job_id: str) -> str:
    """String with a TTL: the token of the worker that runs the job; it renews the TTL."""
    return job(job_id, ":lease")


def job_dependents(job_id: str) -> str:
    """Set: ids of the jobs that wait for this one (depends_on)."""
    return job(job_id, ":dependents")


def harvest_slices(job_id: str) -> str:
    """Hash of a split harvest's slices (saeq.platform.harvest_slices): `tokens:{i}` done so far,
    `error:{i}` (JSON) of a failed slice."""
    return job(job_id, ":slices")


def harvest_slice_owner(job_id: str, index: int) -> str:
    """String with a TTL: the token of the worker running slice `index`; it renews the TTL."""
    return job(job_id, f":slice:{index}:owner")


ALL_JOBS = f"{PREFIX}jobs"
"""Sorted set: every stored job's id, by creation time."""
RUNNING = f"{PREFIX}running"
"""Set: jobs a worker claimed and has not let go of (their slot is held)."""
FINISHED = f"{PREFIX}finished"
"""Sorted set: ended jobs, by when they ended (the reaper restarts their dependents)."""
DISPATCHED = f"{PREFIX}dispatched"
"""Queued jobs with a message on their queue that no worker has claimed yet, scored by when it
was sent: the reaper sends again those whose message was lost."""
EXPIRING = f"{PREFIX}expiring"
"""Ended jobs as `team/job_id`, scored by when their record expires (sweep_expired)."""
SPECS_IN_STORE = f"{PREFIX}specs_in_store"
"""Ids of jobs whose spec lives in the object store, to delete it with the record."""
JOB_RETENTION = f"{PREFIX}settings:job_retention_s"
"""The deployment's retention of ended jobs (JSON seconds), written by the API at start."""
REAPER_ENDED_SEEN = f"{PREFIX}reaper:ended_seen"
"""When the reaper last read FINISHED (JSON seconds)."""


def team(team: str, what: str) -> str:
    """Per-team keys: `jobs` (every job, by creation time), `open` (not ended), `active`
    (dispatched, not ended), `waiting` (ready but held for a slot; highest priority, then oldest,
    first), `ended` (by when the record expires), `submits` (the last minute's), and the uploads'
    `uploads`, `upload_bytes`, `upload_order`, `upload_times`."""
    return f"{PREFIX}team:{team}:{what}"


def idempotency(team: str, key: str) -> str:
    """String: `job_id digest` of the submit that first sent this Idempotency-Key."""
    return f"{PREFIX}idem:{team}:{key}"


def stats(name: str) -> str:
    """Hash of counters (`submitted`, `finished`, `duration`, `attempts_lost`: attempts whose
    worker was lost, found by the reaper) for the metrics endpoints."""
    return f"{PREFIX}stats:{name}"


COUNT_KIND_STATE = f"{PREFIX}count:kind_state"
"""Hash: `kind|state` -> stored jobs (saeq.platform.job_counts), changed in the transaction that
changes a record's state."""
COUNT_TEAM_STATE = f"{PREFIX}count:team_state"
"""Hash: `team|state` -> stored jobs, as COUNT_KIND_STATE."""
COUNT_EXPIRING = f"{PREFIX}count:expiring"
"""Sorted set: ended jobs as `job_id|kind|team|state`, scored by when their record expires; the
counts drop each one once its record is gone (job_counts.settle)."""
COUNT_VERSION = f"{PREFIX}count:version"
"""String: the counters' version; missing (an upgrade, or deleted to repair them): they are
recounted from the records once (job_counts.recount)."""


def queue_sent(queue: str) -> str:
    """Sorted set: queued jobs sent on `queue` and not claimed (waiting for a worker), scored by
    when they were created (the oldest wait)."""
    return f"{PREFIX}queue:{queue}:sent"


def upload_owner(upload_id: str) -> str:
    """String: the team that owns an upload."""
    return f"{PREFIX}upload:{upload_id}"


def lock(name: str) -> str:
    return f"{PREFIX}lock:{name}"


# ---- teams, API keys, quotas -----------------------------------------------------------------

TEAMS = f"{PREFIX}teams"
"""Set: every team's name."""
API_KEYS = f"{PREFIX}keys"
"""Set: every API key's id."""
DEFAULT_QUOTA = f"{PREFIX}quota:default"
"""String: the TeamQuota (JSON) of teams without their own."""


def api_key(key_id: str) -> str:
    """Hash: an API key's `record` (JSON) and the `digest` of the whole key."""
    return f"{PREFIX}key:{key_id}"


def team_quota(team: str) -> str:
    """String: the team's own TeamQuota (JSON)."""
    return f"{PREFIX}quota:team:{team}"


# ---- fair-share scheduling (saeq.platform.scheduler, saeq.platform.fair_share) ----------------


def queue_dispatched(queue: str) -> str:
    """Set: jobs sent on `queue` and not ended (sent, claimed or running): what its capacity
    counts. Added to by the dispatch script, removed from when the job's slot is released."""
    return f"{PREFIX}queue:{queue}:dispatched"


def team_usage(team: str) -> str:
    """Hash: the team's decayed device-seconds `s` as of `at` (Unix seconds), and `job_s`, a
    running average of what one attempt of its jobs used (the scheduler's cost of its next job)."""
    return f"{PREFIX}usage:{team}"


SCHEDULING_POLICY = f"{PREFIX}settings:scheduling"
"""The deployment's fair-share half-life, minimum run time and preemption cap (JSON), written by
the API at start so the workers' schedule() passes and usage records use the same."""
SCHEDULE_AGAIN = f"{PREFIX}schedule:again"
"""String: a schedule() pass was asked for while another held the lock; the holder runs again."""


# ---- worker pools ----------------------------------------------------------------------------

POOL_ADS = f"{PREFIX}pools:ads"
"""Hash: `worker/queue` -> the WorkerAd (JSON) that worker last advertised (saeq.platform.pools)."""
POOL_EXPIRY = f"{PREFIX}pools:expiry"
"""Sorted set: `worker/queue` -> when its ad expires (Redis server time, seconds); readers drop
the expired ones from both keys."""


# ---- live requests ---------------------------------------------------------------------------

LIVE_PREFIX = f"{PREFIX}live:"


def live_slots(team: str) -> str:
    """Sorted set: the team's live requests being computed or waiting -> when the hold expires."""
    return f"{LIVE_PREFIX}slots:{team}"


def live_rate(team: str) -> str:
    """Sorted set: the team's live requests of the last 60 s -> when each was admitted."""
    return f"{LIVE_PREFIX}rate:{team}"


def live_queue(team: str) -> str:
    """List: the team's live requests waiting for a worker, oldest first."""
    return f"{LIVE_PREFIX}queue:{team}"


LIVE_TURNS = f"{LIVE_PREFIX}turns"
"""Sorted set: the teams with waiting requests, scored by when each was last served (the turn
counter `LIVE_TURN`); the workers serve the lowest score first."""
LIVE_TURN = f"{LIVE_PREFIX}turn"
LIVE_OUTCOMES = f"{LIVE_PREFIX}outcomes"
"""Hash: `op|outcome` -> count, over the deployment's life (ok, error, skipped, stopped, withdrawn)."""


def live_cancel(request_id: str) -> str:
    return f"{LIVE_PREFIX}cancel:{request_id}"


def live_reply(request_id: str) -> str:
    """List a live request's answer is pushed to (the API waits on it with BLPOP)."""
    return f"{LIVE_PREFIX}reply:{request_id}"
