"""Prometheus metrics of the API. Job totals are read from Redis at scrape time, so every API
replica reports the same numbers and restarts lose nothing (aggregate them across replicas with
`max by`, not `sum by`); a scrape is cached for `metrics_cache_s`. The stored jobs' gauges come
from counters every state change keeps (saeq.platform.job_counts): a scrape costs
O(kinds x states + teams x states), never a read per stored job. Each worker exports its own
figures (saeq_worker.metrics)."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from saeq.platform import fair_share
from saeq.platform.dispatch import QUEUES
from saeq.platform.queue_load import queue_loads
from saeq.platform.registry import DURATION_BUCKETS_S, Registry

REQUESTS = Counter(
    "saeq_api_job_submissions_total", "Job submissions accepted by this API process", ["kind"], registry=None
)


LIVE_SECONDS = Histogram(
    "saeq_api_live_request_seconds",
    "Live requests (steer and chat: op=steer; label search) answered by this API process, "
    "wall time including the worker",
    ["op", "outcome"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
    registry=None,
)


for _op in ("steer", "search_labels"):  # exported at 0 before the first request
    for _outcome in ("ok", "error"):
        LIVE_SECONDS.labels(op=_op, outcome=_outcome)


def observe_live(op: str, outcome: str, seconds: float) -> None:
    LIVE_SECONDS.labels(op=op, outcome=outcome).observe(seconds)


def observe_submit(kind: str) -> None:
    REQUESTS.labels(kind=kind).inc()


class JobCollector:
    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self):
        stats = self.registry.stats()
        submitted = CounterMetricFamily("saeq_jobs_submitted", "Jobs submitted", labels=["kind"])
        for kind, n in sorted(stats["submitted"].items()):
            submitted.add_metric([kind], float(n))
        yield submitted

        finished = CounterMetricFamily("saeq_jobs_finished", "Jobs that ended, by outcome", labels=["kind", "outcome"])
        for label, n in sorted(stats["finished"].items()):
            kind, outcome = label.split("|")
            finished.add_metric([kind, outcome], float(n))
        yield finished

        lost = CounterMetricFamily(
            "saeq_job_attempts_lost",
            "Job attempts whose worker was lost (its lease expired: killed, OOM, node gone), found by the reaper",
            labels=["kind"],
        )
        # Each submitted kind at 0 until its first loss, so increase() sees that first loss.
        lost_by_kind = {kind: 0.0 for kind in stats["submitted"]}
        lost_by_kind.update({kind: float(n) for kind, n in stats["attempts_lost"].items()})
        for kind, n in sorted(lost_by_kind.items()):
            lost.add_metric([kind], n)
        yield lost

        duration = HistogramMetricFamily(
            "saeq_job_duration_seconds", "Time from start (or submission, if never started) to end", labels=["kind"]
        )
        by_kind: dict[str, dict[str, float]] = {}
        for label, v in stats["duration"].items():
            kind, le = label.split("|")
            by_kind.setdefault(kind, {})[le] = float(v)
        for kind, row in sorted(by_kind.items()):
            buckets = [(str(float(le)), row.get(str(le), 0.0)) for le in DURATION_BUCKETS_S]
            buckets.append(("+Inf", row.get("+Inf", 0.0)))
            duration.add_metric([kind], buckets, sum_value=row.get("sum", 0.0))
        yield duration

        counts = self.registry.job_counts()
        jobs = GaugeMetricFamily("saeq_jobs", "Stored jobs by kind and state", labels=["kind", "state"])
        by_team = GaugeMetricFamily("saeq_team_jobs", "Stored jobs by team and state", labels=["team", "state"])
        # A pair that had jobs stays at 0 once it has none, so a gauge falls to 0 rather than vanishing.
        for (kind, state), n in sorted(counts.by_kind.items()):
            jobs.add_metric([kind, state], n)
        for (team, state), n in sorted(counts.by_team.items()):
            by_team.add_metric([team, state], n)
        yield jobs
        yield by_team

        # A job sent to its queue waits for a worker; one held back by depends_on is not waiting yet.
        now = time.time()
        oldest = {q: counts.oldest_sent_at.get(q) or now for q in QUEUES}
        wait = GaugeMetricFamily(
            "saeq_queue_oldest_wait_seconds",
            "Age of the oldest job waiting in each queue for a worker (0: none)",
            labels=["queue"],
        )
        for q in QUEUES:
            wait.add_metric([q], max(0.0, now - oldest[q]))
        yield wait

        depth = GaugeMetricFamily("saeq_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        for q in QUEUES:
            depth.add_metric([q], self.registry.r.llen(q))
        yield depth

        # What KEDA scales each worker pool to (waiting + running): saeq.platform.queue_load.
        waiting = GaugeMetricFamily(
            "saeq_queue_waiting_jobs",
            "Jobs ready to run on each queue: waiting in saeq for a worker's slot, or sent and unclaimed",
            labels=["queue"],
        )
        running = GaugeMetricFamily("saeq_queue_running_jobs", "Jobs running on each queue", labels=["queue"])
        for q, load in queue_loads(self.registry).items():
            waiting.add_metric([q], load.waiting)
            running.add_metric([q], load.running)
        yield waiting
        yield running


class ShareCollector:
    """Each team's fair share as the scheduler sees it (saeq.platform.fair_share.shares): its
    decayed device-seconds, their fraction of all teams', its weight and its target. The counters
    these decay from are the workers' (saeq_team_device_seconds_total)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self):
        rows = fair_share.shares(self.registry)
        families = {
            "share": GaugeMetricFamily(
                "saeq_team_share_ratio",
                "The team's fraction of all teams' decayed device-seconds (what fair share charges)",
                labels=["team"],
            ),
            "target": GaugeMetricFamily(
                "saeq_team_share_target_ratio",
                "The team's fair-share target: its weight over the summed weights of the teams with a job open",
                labels=["team"],
            ),
            "weight": GaugeMetricFamily("saeq_team_share_weight", "The team's fair-share weight", labels=["team"]),
            "usage_s": GaugeMetricFamily(
                "saeq_team_usage_seconds",
                "The team's device-seconds, decayed as fair share counts them",
                labels=["team"],
            ),
        }
        for team, row in sorted(rows.items()):
            for field, family in families.items():
                family.add_metric([team], float(row[field]))
        yield from families.values()


def make_registry(registry: Registry) -> CollectorRegistry:
    """The API's own collectors in a registry of their own, made once per app start (a test that
    starts one app twice gets two, never the same collectors registered twice in one)."""
    reg = CollectorRegistry()
    reg.register(REQUESTS)
    reg.register(LIVE_SECONDS)
    reg.register(JobCollector(registry))
    reg.register(ShareCollector(registry))
    return reg


class CachedScrape:
    """The registry's exposition text, computed at most every `cache_s` seconds: a scrape costs
    Redis a few dozen reads (the job counts, each team's waiting set and share, each queue's sent
    jobs), so scrapers in a loop need not repeat them. Concurrent scrapes wait for the one
    computing it."""

    def __init__(self, regs: list[CollectorRegistry], cache_s: float):
        self.regs, self.cache_s = regs, cache_s
        self.lock = threading.Lock()
        self.body, self.at = b"", float("-inf")

    def __call__(self) -> bytes:
        with self.lock:
            if time.monotonic() - self.at >= self.cache_s:
                self.body, self.at = b"".join(generate_latest(r) for r in self.regs), time.monotonic()
            return self.body
