"""Prometheus metrics of the API. Job totals are read from Redis at scrape time, so every API
replica reports the same numbers and restarts lose nothing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from saeq.dispatch import QUEUES
from saeq.registry import DURATION_BUCKETS_S, Registry

REQUESTS = Counter("saeq_api_job_submissions_total", "Job submissions accepted by this API process",
                   ["kind"], registry=None)


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

        finished = CounterMetricFamily("saeq_jobs_finished", "Jobs that ended, by outcome",
                                       labels=["kind", "outcome"])
        for label, n in sorted(stats["finished"].items()):
            kind, outcome = label.split("|")
            finished.add_metric([kind, outcome], float(n))
        yield finished

        duration = HistogramMetricFamily("saeq_job_duration_seconds",
                                         "Time from start (or submission, if never started) to end",
                                         labels=["kind"])
        by_kind: dict[str, dict[str, float]] = {}
        for label, v in stats["duration"].items():
            kind, le = label.split("|")
            by_kind.setdefault(kind, {})[le] = float(v)
        for kind, row in sorted(by_kind.items()):
            buckets = [(str(float(le)), row.get(str(le), 0.0)) for le in DURATION_BUCKETS_S]
            buckets.append(("+Inf", row.get("+Inf", 0.0)))
            duration.add_metric([kind], buckets, sum_value=row.get("sum", 0.0))
        yield duration

        jobs = GaugeMetricFamily("saeq_jobs", "Stored jobs by kind and state", labels=["kind", "state"])
        for kind, state, n in self.registry.counts():
            jobs.add_metric([kind, state], n)
        yield jobs

        depth = GaugeMetricFamily("saeq_queue_depth", "Messages waiting in each broker queue",
                                  labels=["queue"])
        for q in QUEUES:
            depth.add_metric([q], self.registry.r.llen(q))
        yield depth


def make_registry(registry: Registry) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(REQUESTS)
    reg.register(JobCollector(registry))
    return reg


def scrape(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
