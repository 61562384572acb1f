"""The fair-share scheduler's cost per dispatch decision (issue 18, acceptance 5: p99 < 5 ms): a
real Redis holding 1,000 queued jobs of 20 teams (weights 1-4, random usage), a worker pool of 50
slots, all full (min_run_s 0: every running job a possible victim); each round one running job ends and `schedule()` picks the next job across teams,
then runs the preemption check on the full queue. Prints p50/p99 of schedule() (one dispatch plus
the check), of the check alone, and of jobs_ahead.
Usage: python bench/scheduler.py [--jobs 1000] [--teams 20] [--slots 50] [--rounds 300] [--redis-url URL] [--smoke]
--smoke: 40 jobs of 4 teams, 5 slots, 20 rounds: checks the bench runs, in seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")  # never above the max on few samples
    return f"p50 {statistics.median(ms):.2f} ms  p99 {q[98]:.2f} ms  max {max(ms):.2f} ms  (n={len(ms)})"


def count_round_trips() -> list[int]:
    """A one-item list counting the packed writes (one per command or pipeline) of every Redis
    connection from now on: the figure that does not depend on how loaded the machine is."""
    from redis.connection import Connection

    count, send = [0], Connection.send_packed_command

    def counted(self, command, check_health=True):
        count[0] += 1
        return send(self, command, check_health)

    Connection.send_packed_command = counted  # type: ignore[method-assign]
    return count


def fill(registry, n_jobs: int, n_teams: int, slots: int, rng: random.Random) -> list[str]:
    """Teams, their usage, a pool of `slots` on queue gpu, and n_jobs jobs (the first `slots` sent
    and claimed). Returns the running ids."""
    from saeq.platform import fair_share, pools
    from saeq.platform.registry import dispatch_ready
    from saeq.platform.teams import TeamQuota
    from saeq.specs.scheduling import WorkerAd

    teams = [f"team{i:02d}" for i in range(n_teams)]
    for i, team in enumerate(teams):
        registry.teams.set_quota(team, TeamQuota(max_running=1_000, max_queued=10_000, share_weight=1 + i % 4))
        fair_share.add_usage(registry.r, team, rng.uniform(0, 36_000))
    ad = WorkerAd(
        worker="bench:1",
        queue="gpu",
        device="cuda",
        device_name="bench",
        memory_bytes=80 << 30,
        count=1,
        slots=slots,
        updated_at=time.time(),
    )
    pools.advertise(registry.r, ad, ttl_s=3_600)
    sent: dict[str, str] = {}
    for k in range(n_jobs):
        job, _ = registry.create(
            kind="train", spec={}, queue="gpu", depends_on=[], team=teams[k % n_teams], priority=rng.randrange(0, 4)
        )
        dispatch_ready(registry, job["id"], lambda j, d: sent.__setitem__(j["id"], d), job)
    for job_id, dispatch_id in sent.items():
        registry.claim(job_id, dispatch_id, "bench:1")
    return list(sent)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000)
    ap.add_argument("--teams", type=int, default=20)
    ap.add_argument("--slots", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--min-run-s", type=float, default=0.0, help="0: every running job may be a victim")
    ap.add_argument("--redis-url", default=None, help="an empty Redis database (default: start one)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.jobs, args.teams, args.slots, args.rounds = 40, 4, 5, 20

    import os

    import redis

    from saeq.platform import fair_share, scheduler
    from saeq.platform.registry import Registry
    from tests.servers import RedisServer, free_port

    server = None
    if args.redis_url is None:
        home = Path(tempfile.mkdtemp(prefix="saeq-bench-sched-"))
        server = RedisServer(port=free_port(), dir=home, log_path=home / "redis.log")
        server.start()
    try:
        client = redis.Redis.from_url(args.redis_url or server.url, decode_responses=True)  # type: ignore[union-attr]
        client.flushdb()
        registry = Registry(client, lease_ttl_s=3_600)
        policy = fair_share.SchedulingPolicy(min_run_s=args.min_run_s)
        fair_share.publish_policy(client, policy)
        rng = random.Random(0)
        running = fill(registry, args.jobs, args.teams, args.slots, rng)
        print(f"{args.jobs} jobs of {args.teams} teams, {len(running)} running on {args.slots} slots")
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (idle: well under 1)")

        trips = count_round_trips()
        decide_ms, decide_cpu_ms, check_ms, ahead_ms, decide_trips, sent = [], [], [], [], [], {}
        send = lambda job, dispatch_id: sent.__setitem__(job["id"], dispatch_id)
        for _ in range(args.rounds):
            ended = running.pop(rng.randrange(len(running)))
            registry.finish_unowned(ended, "cancelled")
            t0, cpu0, trips0 = time.perf_counter(), time.process_time(), trips[0]
            new = scheduler.schedule(registry, send)
            decide_ms.append((time.perf_counter() - t0) * 1e3)
            decide_cpu_ms.append((time.process_time() - cpu0) * 1e3)
            decide_trips.append(trips[0] - trips0)
            for job_id in new:
                registry.claim(job_id, sent[job_id], "bench:1")
                running.append(job_id)
            lines = scheduler.waiting_lines(registry).get("gpu", {})
            ranking = scheduler.Ranking.read(registry, lines, policy)
            t0 = time.perf_counter()
            scheduler.preempt_for_waiting(registry, "gpu", lines, ranking, policy)
            check_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            scheduler.jobs_ahead(registry, "team00", 2, "gpu")
            ahead_ms.append((time.perf_counter() - t0) * 1e3)
        print(f"schedule() per dispatch (decision + send + preemption check): {percentiles(decide_ms)}")
        print(f"  of which this process's CPU time:                          {percentiles(decide_cpu_ms)}")
        print(
            f"Redis round trips per schedule(): median {statistics.median(decide_trips):.0f}, max {max(decide_trips)}"
        )
        print(f"preemption check alone:                                      {percentiles(check_ms)}")
        print(f"jobs_ahead (plan):                                            {percentiles(ahead_ms)}")
        print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
