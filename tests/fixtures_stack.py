"""A running saeq stack for integration tests: the real API and a real Celery worker as child
processes, on the session's real Redis and S3 (SeaweedFS) servers. Each stack gets its own Redis
database, so jobs and queues of one test module never reach another's worker."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from saeq.client.client import Client
from saeq.dev.local_stack import LocalStack, StackOptions
from tests.servers import free_port

_db = itertools.count(1)
_local_roots: list[str] = []


def logs_tail(logs: Path, lines: int = 40) -> str:
    """The last lines of each of a stack's logs (api, worker, ...): what a test that gave up on a
    job prints, so that a failure seen once in CI explains itself."""
    out = []
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(out)


@pytest.fixture(scope="session", autouse=True)
def _tests_save_models_under_basetemp(tmp_path_factory):
    """Stacks allow local paths under pytest's temporary root only, where tests save their tiny
    models and SAEs: `saeq up` allows none by default."""
    _local_roots[:] = [str(tmp_path_factory.getbasetemp().resolve())]


def make_stack(tmp_path, redis_srv, s3_srv, **env) -> LocalStack:
    import redis

    url = f"{redis_srv.url.rsplit('/', 1)[0]}/{next(_db) % 16}"
    # A database an earlier stack used may still hold its queued messages and job records.
    redis.Redis.from_url(url).flushdb()
    opts = StackOptions(
        home=tmp_path,
        port=free_port(),
        redis_url=url,
        store=f"s3://{s3_srv.bucket}",
        s3_endpoint=s3_srv.endpoint,
        s3_access_key=s3_srv.access_key,
        s3_secret_key=s3_srv.secret_key,
        # The hub is unreachable here: offline mode makes "not found" answer at once, not after retries.
        extra_env={
            "SAEQ_LEASE_TTL_S": "6",
            "SAEQ_HEARTBEAT_S": "1",
            "SAEQ_REAP_EVERY_S": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "SAEQ_LOCAL_PATH_ROOTS": json.dumps(_local_roots),
            # Each stack its own node cache: a test that counts S3 reads must not find another's shards.
            "SAEQ_SHARD_CACHE_DIR": str(tmp_path / "shard-cache"),
            **env,
        },
    )
    return LocalStack(opts)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    """API + one worker; `stack.url`, `stack.kill('worker')`, `stack.respawn('worker')`."""
    with make_stack(tmp_path_factory.mktemp("stack"), redis_srv, s3_srv) as st:
        yield st


@pytest.fixture
def client(stack) -> Iterator[Client]:
    with Client(stack.url, api_key=stack.admin_key, timeout=60) as c:
        yield c
