"""Job submission under load: `POST /v1/jobs` at a fixed open-loop rate against a local API with
no worker (jobs stay queued, nothing runs), with a few reads mixed in.

Requests leave at fixed times whatever the server does, and latency counts from the scheduled
time, so a stalled server shows as queueing instead of as fewer requests (coordinated omission).
Target: submit p99 < 50 ms with no errors at 100 requests/s.
Usage: python bench/api_load.py [--rate 100] [--duration 60] [--get-rate 10] [--list-rate 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from saeq.dev.local_stack import LocalStack, StackOptions, free_port

SPEC = {"spec": {"kind": "harvest", "max_tokens": 1000}}
TARGET_P99_MS = 50.0
OK = {"submit": 201, "get": 200, "list": 200}


class ApiOnlyStack(LocalStack):
    """Redis and the API, without a worker: submitted jobs stay queued."""

    def respawn(self, name: str) -> None:
        if name != "worker":
            super().respawn(name)


@dataclass
class Op:
    """Outcomes of one kind of request."""

    latency_ms: list[float] = field(default_factory=list)
    """From the scheduled send time to the response (what a user waits)."""
    service_ms: list[float] = field(default_factory=list)
    """From the actual send to the response (without the generator's own lag)."""
    lag_ms: list[float] = field(default_factory=list)
    """Actual send minus scheduled send: the generator falling behind."""
    errors: Counter = field(default_factory=Counter)
    sent: int = 0


def schedule(rate: float, get_rate: float, list_rate: float, duration: float) -> list[tuple[float, str]]:
    """(offset in s, op) of every request, in order; reads are offset so they don't share ticks."""
    events = [(i / rate, "submit") for i in range(int(rate * duration))]
    events += [((i + 0.5) / get_rate, "get") for i in range(int(get_rate * duration))] if get_rate else []
    events += [((i + 0.25) / list_rate, "list") for i in range(int(list_rate * duration))] if list_rate else []
    return sorted(events)


class RawPool:
    """Keep-alive HTTP/1.1 connections to one host in a few lines of asyncio. httpx costs 2 ms of
    CPU per request on this 2-core machine, and ~10 ms with hundreds of requests pending (its pool
    scans every waiting request), which would take the core the API needs (`--client httpx`)."""

    KEEP_ALIVE_S = 4.0
    """Reuse a connection idle for less than this: uvicorn closes them after 5 s."""

    def __init__(self, url: str, size: int, headers: dict[str, str]):
        host, port = url.removeprefix("http://").split(":")
        self.addr, self.idle, self.slots = (host, int(port)), [], asyncio.Semaphore(size)
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"host": f"{host}:{port}", **headers}.items())

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        msg = (
            f"{method} {path} HTTP/1.1\r\n{self.head}content-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n"
        ).encode() + data
        async with self.slots:
            while self.idle and time.monotonic() - self.idle[-1][2] > self.KEEP_ALIVE_S:
                self.idle.pop()[1].close()
            reader, writer, _ = self.idle.pop() if self.idle else (*await asyncio.open_connection(*self.addr), 0)
            try:
                writer.write(msg)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                fields = dict(ln.split(": ", 1) for ln in head.split("\r\n")[1:] if ": " in ln)
                payload = await reader.readexactly(int(fields["content-length"]))
            except BaseException:
                writer.close()
                raise
            if fields.get("connection") == "close":
                writer.close()
            else:
                self.idle.append((reader, writer, time.monotonic()))
            return int(head[9:12]), payload

    async def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


class HttpxPool:
    """The same requests through httpx.AsyncClient."""

    def __init__(self, url: str, size: int, headers: dict[str, str]):
        self.http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=None,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        )

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        r = await self.http.request(method, path, json=body)
        return r.status_code, r.content

    async def close(self) -> None:
        await self.http.aclose()


async def request(http: RawPool | HttpxPool, name: str, ids: list[str], rng: random.Random) -> tuple[int, bytes]:
    if name == "submit":
        return await http.request("POST", "/v1/jobs", SPEC)
    if name == "get":
        return await http.request("GET", f"/v1/jobs/{rng.choice(ids[-1000:])}")
    return await http.request("GET", "/v1/jobs?limit=50")


async def drive(
    http: RawPool | HttpxPool, events: list[tuple[float, str]], ids: list[str], timeout_s: float, max_errors: int
) -> tuple[dict[str, Op], float, bool]:
    """Send each request at its time, never waiting for earlier ones; stop sending after
    `max_errors` errors, so a collapsed server is not buried. Returns (ops, wall seconds, aborted)."""
    ops = {name: Op() for name in OK}
    rng = random.Random(0)
    loop = asyncio.get_running_loop()

    async def one(at: float, name: str) -> None:
        op = ops[name]
        sent = loop.time()
        op.sent += 1
        try:
            status, payload = await asyncio.wait_for(request(http, name, ids, rng), timeout_s)
            if status != OK[name]:
                op.errors[f"HTTP {status}"] += 1
            elif name == "submit":
                ids.append(json.loads(payload)["id"])
        except Exception as e:
            op.errors[type(e).__name__] += 1
        done = loop.time()
        op.latency_ms.append(1000 * (done - at))
        op.service_ms.append(1000 * (done - sent))
        op.lag_ms.append(1000 * (sent - at))

    t0 = loop.time() + 0.1
    tasks, aborted = [], False
    for offset, name in events:
        at = t0 + offset
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if name != "submit" and not ids:
            continue  # nothing to read yet
        if aborted := sum(sum(o.errors.values()) for o in ops.values()) >= max_errors:
            break
        tasks.append(asyncio.create_task(one(at, name)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s + 5)
    return ops, loop.time() - t0, aborted


async def probe(
    http: RawPool | HttpxPool, rds: redis.Redis, ids: list[str], n: int, timeout_s: float
) -> dict[str, tuple[float, float, int]]:
    """One request at a time, after the load: {op: (median ms, Redis commands per request, errors)}."""
    rng = random.Random(1)
    out = {}
    for name in OK:
        before, times, errors = redis_calls(rds), [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(request(http, name, ids, rng), timeout_s)
            except Exception:
                status, payload = 0, b""
            times.append(1000 * (time.perf_counter() - t0))
            errors += status != OK[name]
            if name == "submit" and status == OK[name]:
                ids.append(json.loads(payload)["id"])
        calls = redis_calls(rds)
        calls.subtract(before)
        calls["info"] -= 1  # the INFO that read `calls`
        out[name] = (statistics.median(times), sum(calls.values()) / n, errors)
    return out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (uvicorn's workers)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:13]))  # ppid, utime+stime
    tree, total = [pid], 0
    while tree:
        p = tree.pop()
        total += stats.get(p, (0, 0))[1]
        tree += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total / os.sysconf("SC_CLK_TCK")


def redis_calls(r: redis.Redis) -> Counter:
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()})


def metric_lines(text: str, *prefixes: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefixes)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0, help="submissions per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of timed load")
    ap.add_argument("--get-rate", type=float, default=10.0, help="GET /v1/jobs/{id} per second (0: none)")
    ap.add_argument("--list-rate", type=float, default=1.0, help="GET /v1/jobs?limit=50 per second (0: none)")
    ap.add_argument("--warmup", type=float, default=3.0, help="untimed seconds at the same rates first")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections at most")
    ap.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: a minimal asyncio HTTP/1.1 client (default, light on CPU); httpx: httpx.AsyncClient",
    )
    ap.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="uvicorn worker processes of the API. Above 1, uvicorn 0.54 leaves Nagle on (its "
        "pre-bound socket has proto 0): +44 ms per keep-alive request (Kludex/uvicorn#3149)",
    )
    ap.add_argument(
        "--quota",
        default='{"max_running": 10000, "max_queued": 1000000, "max_stored_jobs": 1000000, '
        '"submits_per_minute": 1000000}',
        help="the teams' default quota (SAEQ_DEFAULT_QUOTA): high, so that every job is "
        "dispatched as it would be with workers free, and none is refused",
    )
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    ap.add_argument("--max-errors", type=int, default=300, help="stop sending after this many errors")
    ap.add_argument("--store", default=None, help="file:///dir or s3://bucket; default a temp directory")
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        default=None,
        help="record the API process with py-spy during the timed load: a flame graph (.svg), "
        "speedscope (.json) or collapsed stacks (.txt); needs py-spy",
    )
    args = ap.parse_args()
    if args.rate * args.duration > 100_000:
        raise SystemExit("at most 100,000 submissions per run")

    # `timeout` and kill send SIGTERM: leave through the stack's __exit__, which stops the API and Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home = Path(tempfile.mkdtemp(prefix="saeq-bench-api-"))
    # An admin key as `saeq keys new` makes them (saeq_<16 hex>_<43 url-safe>); an API without keys ignores it.
    key = f"saeq_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    opts = StackOptions(
        home=home,
        port=free_port(),
        store=args.store,
        extra_env={
            "SAEQ_BOOTSTRAP_ADMIN_KEY": key,
            "SAEQ_DEFAULT_QUOTA": args.quota,
            "WEB_CONCURRENCY": str(args.api_workers),
        },
    )  # uvicorn's --workers
    load_before = os.getloadavg()
    try:
        stack = ApiOnlyStack(opts)
        stack.admin_key = key  # a LocalStack with keys gives the API its admin_key (older ones: extra_env)
        with stack:
            rds = redis.Redis.from_url(stack.redis_url, decode_responses=True)
            pids = {"API": stack.procs["api"].pid, "Redis": stack.procs["redis"].pid}
            ids: list[str] = []

            async def run():
                pool = (RawPool if args.client == "raw" else HttpxPool)(
                    stack.url, args.connections, {"authorization": f"Bearer {key}"}
                )
                try:
                    warm, _, _ = await drive(
                        pool,
                        schedule(args.rate, args.get_rate, args.list_rate, args.warmup),
                        ids,
                        args.timeout,
                        args.max_errors,
                    )
                    calls0, cpu0, own0 = redis_calls(rds), {k: cpu_s(p) for k, p in pids.items()}, time.process_time()
                    spy = None
                    if args.py_spy:
                        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                        # --gil: only the thread holding the GIL, so the profile is where CPU goes,
                        # not the 40 threads of the route pool waiting on Redis.
                        fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(args.py_spy).suffix, "flamegraph")
                        spy = subprocess.Popen(
                            [
                                exe,
                                "record",
                                "-p",
                                str(pids["API"]),
                                "-o",
                                args.py_spy,
                                "-f",
                                fmt,
                                "-d",
                                str(int(args.duration) + 1),
                                "-r",
                                "100",
                                "--gil",
                                "--nonblocking",
                                "--subprocesses",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                        )
                    timed = schedule(args.rate, args.get_rate, args.list_rate, args.duration)
                    ops, wall, aborted = await drive(pool, timed, ids, args.timeout, args.max_errors)
                    cpu = {k: cpu_s(p) - cpu0[k] for k, p in pids.items()}
                    cpu["this generator"] = time.process_time() - own0
                    calls = redis_calls(rds)
                    calls.subtract(calls0)
                    calls["info"] -= 1
                    if spy is not None:
                        spy.wait(timeout=120)
                    idle = await probe(pool, rds, ids, 30, args.timeout)
                    return warm, ops, wall, aborted, +calls, cpu, idle
                finally:
                    await pool.close()

            warm, ops, wall, aborted, calls, cpu, idle = asyncio.run(run())
            metrics = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {key}"}).text
            depth = rds.llen("gpu")
            rds.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()
    report(args, ops, wall, aborted, warm, calls, cpu, idle, metrics, depth, len(ids), (load_before, load_after))


def report(
    args,
    ops: dict[str, Op],
    wall: float,
    aborted: bool,
    warm: dict[str, Op],
    calls: Counter,
    cpu: dict[str, float],
    idle: dict[str, tuple[float, float, int]],
    metrics: str,
    depth: int,
    created: int,
    load,
) -> None:
    sub = ops["submit"]
    n_req = sum(o.sent for o in ops.values())
    print(
        f"saeq API ({args.api_workers} uvicorn process{'es' if args.api_workers > 1 else ''}) under open-loop "
        f"load, loopback, API + Redis and no worker; {os.cpu_count()} CPUs, "
        f"load average (1 min) {load[0][0]:.2f} before, {load[1][0]:.2f} after"
    )
    print(
        f"schedule: {args.rate:g} submits/s + {args.get_rate:g} gets/s + {args.list_rate:g} lists/s for "
        f"{args.duration:g} s, after {args.warmup:g} s of warmup ({sum(o.sent for o in warm.values())} requests, "
        f"{sum(sum(o.errors.values()) for o in warm.values())} errors, not counted); "
        f"at most {args.connections} keep-alive connections ({args.client} client)"
    )
    print(
        f"{'':<24}{'sent':>6}{'errors':>7}{'ok/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
        f"  ms, from the scheduled send"
    )
    for name, label in (("submit", "POST /v1/jobs"), ("get", "GET /v1/jobs/{id}"), ("list", "GET /v1/jobs?limit=50")):
        op, lat = ops[name], ops[name].latency_ms
        if op.sent:
            n_err = sum(op.errors.values())
            print(
                f"{label:<24}{op.sent:>6}{n_err:>7}{(op.sent - n_err) / wall:>8.1f}{pct(lat, 0.5):>8.1f}"
                f"{pct(lat, 0.9):>8.1f}{pct(lat, 0.99):>8.1f}{max(lat):>8.1f}"
            )
    if aborted:
        print(f"  ABORTED: stopped sending after {args.max_errors} errors, {wall:.1f} s into the schedule")
    for name, op in ops.items():
        if op.errors:
            print(f"  {name} errors: " + ", ".join(f"{k} x{n}" for k, n in op.errors.most_common()))
    print(
        f"submit: service time (actual send to response) p50 {pct(sub.service_ms, 0.5):.1f} ms, "
        f"p99 {pct(sub.service_ms, 0.99):.1f} ms; generator lag behind schedule p99 {pct(sub.lag_ms, 0.99):.1f} ms, "
        f"max {max(sub.lag_ms):.1f} ms"
    )
    print(
        "CPU over the timed load: "
        + ", ".join(f"{k} {v:.1f} s ({v / wall:.0%} of a core)" for k, v in cpu.items())
        + f"; API {1000 * cpu['API'] / n_req:.2f} ms per request"
    )
    print(
        f"Redis commands over the timed load: {sum(calls.values())} ({sum(calls.values()) / n_req:.1f} per request): "
        + ", ".join(f"{k} {v}" for k, v in calls.most_common(10))
    )
    print(
        "one request at a time afterwards, 30 each, median: "
        + "; ".join(
            f"{name} {ms:.1f} ms, {n:.1f} Redis commands" + (f", {e} errors" if e else "")
            for name, (ms, n, e) in idle.items()
        )
    )
    print(
        f"server side: {created} jobs answered 201 to this bench, broker queue 'gpu' holds {depth} messages; "
        "from /metrics:"
    )
    for ln in metric_lines(metrics, "saeq_api_job_submissions_total{", "saeq_jobs{", 'saeq_queue_depth{queue="gpu"}'):
        print(f"  {ln}")
    p99 = pct(sub.latency_ms, 0.99)
    errors = sum(sum(o.errors.values()) for o in ops.values())
    verdict = "PASS" if p99 < TARGET_P99_MS and errors == 0 else "FAIL"
    print(
        f"{verdict}: submit p99 {p99:.1f} ms (target < {TARGET_P99_MS:g}), {errors} errors (target 0), "
        f"{(sub.sent - sum(sub.errors.values())) / wall:.1f} submits/s answered 2xx of {args.rate:g}"
    )
    if args.py_spy:
        print(f"py-spy profile of the API: {args.py_spy}")


if __name__ == "__main__":
    main()
