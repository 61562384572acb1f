"""The fair-share scheduler's cost per dispatch decision (issue 18, acceptance 5: p99 < 5 ms): a
real Redis holding 1,000 queued jobs of 20 teams (weights 1-4, random usage), a worker pool of 50
slots, all full (min_run_s 0: every running job a possible victim); each round one running job
ends and `schedule()` picks the next job across teams, then runs the preemption check on the full
queue. Prints p50/p99 of schedule() (wall and CPU), its Redis round trips, and jobs_ahead, for
this scheduler and the one of revision --before (git show), in one run on the same data
(interleaved rounds, one Redis database each).
Usage: python bench/scheduler.py [--jobs 1000] [--teams 20] [--slots 50] [--rounds 300] [--before REV] [--redis-url URL] [--smoke]
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


def old_module(rev: str, path: str, name: str):
    """The module at `path` as of git revision `rev`, imported as `name`, or None when git cannot
    show it."""
    import subprocess
    import types

    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    module = sys.modules[name] = types.ModuleType(name)  # dataclasses look it up
    exec(compile(source.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def old_scheduler(rev: str):
    """The scheduler module as of git revision `rev`, with that revision's request_preempt (a
    preemption request was a WATCH transaction and an event then), or None when git cannot show
    it: the peer this bench compares with, run on the same data. Returns (module, request_preempt
    or None: the current one)."""
    module = old_module(rev, "shared/saeq/platform/scheduler.py", "saeq_scheduler_before")
    if module is None:
        return None
    preempting = old_module(rev, "shared/saeq/platform/job_preempt.py", "saeq_job_preempt_before")
    return module, (preempting.Preempting.request_preempt if preempting is not None else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000)
    ap.add_argument("--teams", type=int, default=20)
    ap.add_argument("--slots", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--min-run-s", type=float, default=0.0, help="0: every running job may be a victim")
    ap.add_argument("--before", default=BEFORE, help="git revision of the scheduler to compare with ('': none)")
    ap.add_argument("--redis-url", default=None, help="a Redis whose databases 0 and 1 are empty (default: start one)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.jobs, args.teams, args.slots, args.rounds = 40, 4, 5, 20

    import os
    import types

    import redis

    from saeq.platform import fair_share, scheduler
    from saeq.platform.registry import Registry
    from tests.servers import RedisServer, free_port

    peers = {"after": (scheduler, None)}
    if args.before and (before := old_scheduler(args.before)) is not None:
        peers = {f"before ({args.before})": before, **peers}
    server = None
    if args.redis_url is None:
        home = Path(tempfile.mkdtemp(prefix="saeq-bench-sched-"))
        server = RedisServer(port=free_port(), dir=home, log_path=home / "redis.log")
        server.start()
    try:
        base = (args.redis_url or server.url).rsplit("/", 1)[0]  # type: ignore[union-attr]
        runs = {}
        for db, (name, (module, request_preempt)) in enumerate(peers.items()):
            client = redis.Redis.from_url(f"{base}/{db}", decode_responses=True)
            client.flushdb()
            registry = Registry(client, lease_ttl_s=3_600)
            if request_preempt is not None:  # the revision's own, on this peer's registry only
                registry.request_preempt = types.MethodType(request_preempt, registry)
            fair_share.publish_policy(client, fair_share.SchedulingPolicy(min_run_s=args.min_run_s))
            rng = random.Random(0)  # the same jobs, usage and ends for every peer
            runs[name] = Run(module, registry, fill(registry, args.jobs, args.teams, args.slots, rng), rng)
        print(
            f"{args.jobs} jobs of {args.teams} teams, {args.slots} running on {args.slots} slots; peers: {', '.join(runs)}"
        )
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (idle: well under 1)")
        trips = count_round_trips()
        for _ in range(args.rounds):
            for run in runs.values():  # interleaved: both see the same load
                run.round(trips)
        for name, run in runs.items():
            print(f"{name}:")
            print(f"  schedule() per dispatch (decision + send + preemption check), wall: {percentiles(run.wall_ms)}")
            print(f"    of which this process's CPU time:                               {percentiles(run.cpu_ms)}")
            print(
                f"  Redis round trips per schedule(): median {statistics.median(run.trips):.0f}, max {max(run.trips)}"
            )
            quiet = [i for i, n in enumerate(run.asked) if n == 0]
            print(f"  rounds that asked a preemption: {len(run.asked) - len(quiet)} of {len(run.asked)}; the others:")
            if quiet:
                print(f"    wall: {percentiles([run.wall_ms[i] for i in quiet])}")
                print(f"    CPU:  {percentiles([run.cpu_ms[i] for i in quiet])}")
                print(f"    round trips: median {statistics.median([run.trips[i] for i in quiet]):.0f}")
            print(f"  jobs_ahead (a plan's place in line, every waiting job read):       {percentiles(run.ahead_ms)}")
        print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    finally:
        if server is not None:
            server.stop()


BEFORE = "a60e785"
"""The last revision whose scheduler asked each preemption with its own WATCH transaction and
event (~4 round trips a victim), the pass's lock freed after them."""


class Run:
    """One peer's scheduler on its own database: each round one running job ends, schedule() picks
    the next, the jobs it sent are claimed; then jobs_ahead for a plan."""

    def __init__(self, module, registry, running: list[str], rng: random.Random):
        self.module, self.registry, self.running, self.rng = module, registry, running, rng
        self.sent: dict[str, str] = {}
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []
        self.trips: list[int] = []
        self.ahead_ms: list[float] = []
        self.asked: list[int] = []
        """Preemption requests each round: running jobs whose `preempt` field it set."""
        self._asked_ids: set[str] = set()

    def round(self, trips: list[int]) -> None:
        registry = self.registry
        ended = self.running.pop(self.rng.randrange(len(self.running)))
        registry.finish_unowned(ended, "cancelled")
        t0, cpu0, trips0 = time.perf_counter(), time.process_time(), trips[0]
        new = self.module.schedule(registry, lambda job, dispatch_id: self.sent.__setitem__(job["id"], dispatch_id))
        self.wall_ms.append((time.perf_counter() - t0) * 1e3)
        self.cpu_ms.append((time.process_time() - cpu0) * 1e3)
        self.trips.append(trips[0] - trips0)
        self.asked.append(self._count_asked())
        for job_id in new:
            registry.claim(job_id, self.sent[job_id], "bench:1")
            self.running.append(job_id)
        t0 = time.perf_counter()
        self.module.jobs_ahead(registry, "team00", 2, "gpu")
        self.ahead_ms.append((time.perf_counter() - t0) * 1e3)

    def _count_asked(self) -> int:
        """How many running jobs were asked to yield since the last call (read after the timing:
        both peers' requests, whatever path they take, counted alike)."""
        from saeq.platform import redis_keys

        pipe = self.registry.r.pipeline(transaction=False)
        for job_id in self.running:
            pipe.hget(redis_keys.job(job_id), "preempt")
        now = {job_id for job_id, raw in zip(self.running, pipe.execute(), strict=True) if raw and raw != "null"}
        new = now - self._asked_ids
        self._asked_ids |= now
        return len(new)


if __name__ == "__main__":
    main()
