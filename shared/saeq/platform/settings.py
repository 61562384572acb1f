"""Deployment settings shared by the API and the workers, read from SAEQ_* environment variables.

Job knobs never live here: they are in the job's spec.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from saeq.platform.s3_store import S3Store
from saeq.platform.store import LocalStore, ObjectStore
from saeq.specs import ENDPOINT_NAME

log = logging.getLogger("saeq.platform.settings")


class LlmEndpoint(BaseModel):
    """Where an LLM endpoint that specs name lives, and which variable holds its key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(pattern=r"^https?://", max_length=500)
    """E.g. `http://vllm:8000/v1` or `https://api.openai.com/v1`."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")
    """Environment variable of the workers that holds the key (mounted from the optional
    `saeq-llm-keys` Secret); None: the endpoint takes no key."""


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAEQ_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Broker and job records."""
    redis_retry_s: float = Field(default=25.0, ge=0)
    """How long a job-record operation is retried, with backoff, while Redis is unreachable (a
    restart) before it fails: the API then answers 503, a running job keeps running."""
    store: str = "file://" + str(Path.home() / ".saeq" / "store")
    """`file:///abs/dir` (local directory) or `s3://bucket` (with the s3_* settings)."""
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_secure: bool = False
    s3_region: str | None = None
    s3_public_endpoint: str | None = None
    """Host:port put into presigned download URLs, when users reach S3 by another name."""
    s3_retry_s: float = Field(default=60.0, ge=0)
    """How long an S3 operation is retried, with backoff, through connection errors, timeouts and
    5xx answers before it fails (a job then fails with store_error)."""
    public_url: str = "http://127.0.0.1:8000"
    """Base URL of the API as users reach it (for local-store download links)."""
    signing_key: SecretStr | None = None
    """Signs the download links of a local store (`/v1/files`, HMAC-SHA256): a random secret of at
    least 32 characters (`openssl rand -hex 32`), the same in the API and every worker. The API and
    the workers refuse to start without one, or with a short or published one, unless
    `insecure_dev` is set; `saeq up` makes a new one per stack. Changing it voids every link issued;
    revoking an API key does not: the links it fetched stay valid until they expire."""
    insecure_dev: bool = False
    """`SAEQ_INSECURE_DEV=1`: start without a good `signing_key`, on a machine only you use. With
    none, links are signed with a key made at start that only that process knows (they die with
    it); a weak one is used as it is, and anyone who knows it can forge links."""
    link_ttl_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    """How long a local-store download link is valid; `/v1/files` refuses (403) a link whose
    `expires` lies further ahead than this (plus a minute of clock skew), whoever signed it."""
    max_attempts: int = Field(default=3, ge=1)
    """A job whose worker is lost is retried until it has started this many times."""
    lease_ttl_s: float = Field(default=15.0, gt=0)
    """A running job whose worker has not sent a heartbeat for this long is considered lost."""
    heartbeat_s: float = Field(default=3.0, gt=0)
    visibility_timeout_s: int = 48 * 3600
    """Redis-broker visibility timeout: longer than the longest job, identical in every app."""
    job_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long an ended job's record (and its events) stays in Redis; its artifacts stay in the
    store. Admins purge earlier with `POST /v1/admin/purge` (`saeq purge`). The API's value wins:
    it publishes it in Redis at start for the workers."""
    fair_share_half_life_s: float = Field(default=24 * 3600.0, gt=0)
    """Half-life of a team's recorded device-seconds in the fair-share scheduler: usage this old
    counts half (Slurm's PriorityDecayHalfLife). The API's value wins: it publishes it at start."""
    preempt_min_run_s: float = Field(default=600.0, ge=0)
    """A job runs at least this long since its last (re)start before the scheduler may preempt it."""
    max_preemptions: int = Field(default=5, ge=0)
    """A job preempted this many times is never preempted again: it runs to its end."""
    cache_dir: str = str(Path.home() / ".cache" / "saeq")
    """Worker-side cache (converted models)."""
    llm_endpoints: dict[Annotated[str, Field(pattern=ENDPOINT_NAME)], LlmEndpoint] = {}
    """The LLM endpoints that label jobs and checks may name (`endpoint` in a spec), as JSON:
    `{"vllm": {"base_url": "http://vllm:8000/v1"}, "openai": {"base_url":
    "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}}`. A spec naming another is
    refused; none is allowed by default."""
    local_path_roots: list[Annotated[str, Field(pattern=r"^/")]] = []
    """Directories under which specs may name local paths (a model directory, an imported SAE),
    as a JSON list, e.g. `["/models"]`; symlinks and `..` are resolved before the check. The default
    allows none: specs name hub models, uploads and other jobs' outputs only. Never `["/"]` where
    teams share workers: a team could read another's SAE by its path in a local store."""

    def signing_key_problem(self) -> str | None:
        """Why `signing_key` would let others forge download links, or None when it is fine."""
        key = self.signing_key.get_secret_value() if self.signing_key is not None else ""
        if not key:
            return "SAEQ_SIGNING_KEY is not set"
        if key in PUBLISHED_SIGNING_KEYS:
            return "SAEQ_SIGNING_KEY is a published example value"
        if len(key) < MIN_SIGNING_KEY_CHARS:
            return f"SAEQ_SIGNING_KEY has {len(key)} characters, fewer than {MIN_SIGNING_KEY_CHARS}"
        return None

    def require_signing_key(self, process: str) -> None:
        """At start: InsecureSettings unless the signing key is good or `insecure_dev` is set."""
        problem = self.signing_key_problem()
        if problem is None:
            return
        if self.insecure_dev:
            log.warning(
                "%s; starting anyway (SAEQ_INSECURE_DEV=1): download links can be forged or die with this process",
                problem,
            )
            return
        raise InsecureSettings(
            f"the saeq {process} refuses to start: {problem}. It signs download links (/v1/files, which "
            f"take no API key): without a secret one anyone can forge a link to any team's artifacts. Set "
            f"SAEQ_SIGNING_KEY to the same random secret of at least {MIN_SIGNING_KEY_CHARS} characters in "
            f"the API and every worker (e.g. `openssl rand -hex 32`; `saeq up` makes one per stack), or "
            f"SAEQ_INSECURE_DEV=1 on a machine only you use."
        )


class InsecureSettings(RuntimeError):
    """Settings that would let anyone forge download links: the API and workers refuse to start."""


MIN_SIGNING_KEY_CHARS = 32
PUBLISHED_SIGNING_KEYS = frozenset({"saeq-dev-signing-key", "dev-signing-key", "change-me-signing-key"})
"""Keys that have been printed in saeq's code, manifests or examples (the old built-in default)."""


def open_store(s: PlatformSettings) -> ObjectStore:
    if s.store.startswith("file://"):
        key = s.signing_key.get_secret_value() if s.signing_key is not None else ""
        # No key (allowed only with insecure_dev): one only this process knows, never a public one.
        return LocalStore(
            s.store[len("file://") :],
            url_base=s.public_url,
            link_ttl_s=s.link_ttl_s,
            signing_key=key.encode() or secrets.token_bytes(32),
        )
    if s.store.startswith("s3://"):
        bucket = s.store[len("s3://") :].strip("/")
        store = S3Store(
            s.s3_endpoint,
            s.s3_access_key,
            s.s3_secret_key.get_secret_value(),
            bucket,
            secure=s.s3_secure,
            region=s.s3_region,
            public_endpoint=s.s3_public_endpoint,
            retry_s=s.s3_retry_s,
        )
        store.ensure_bucket()
        return store
    raise ValueError(f"SAEQ_STORE must start with file:// or s3://, got {s.store!r}")
