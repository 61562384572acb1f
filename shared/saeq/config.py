"""Deployment settings shared by the API and the workers, read from SAEQ_* environment variables.

Job knobs never live here: they are in the job's spec.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from saeq.store import LocalStore, ObjectStore, S3Store


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAEQ_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Broker and job records."""
    store: str = "file://" + str(Path.home() / ".saeq" / "store")
    """`file:///abs/dir` (local directory) or `s3://bucket` (with the s3_* settings)."""
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_secure: bool = False
    s3_region: str | None = None
    s3_public_endpoint: str | None = None
    """Host:port put into presigned download URLs, when users reach S3 by another name."""
    public_url: str = "http://127.0.0.1:8000"
    """Base URL of the API as users reach it (for local-store download links)."""
    signing_key: SecretStr = SecretStr("saeq-dev-signing-key")
    """Signs local-store download links."""
    max_attempts: int = Field(default=3, ge=1)
    """A job whose worker is lost is retried until it has started this many times."""
    lease_ttl_s: float = Field(default=15.0, gt=0)
    """A running job whose worker has not sent a heartbeat for this long is considered lost."""
    heartbeat_s: float = Field(default=3.0, gt=0)
    visibility_timeout_s: int = 48 * 3600
    """Redis-broker visibility timeout: longer than the longest job, identical in every app."""
    cache_dir: str = str(Path.home() / ".cache" / "saeq")
    """Worker-side cache (converted models)."""


def open_store(s: PlatformSettings) -> ObjectStore:
    if s.store.startswith("file://"):
        return LocalStore(s.store[len("file://"):], url_base=s.public_url,
                          signing_key=s.signing_key.get_secret_value().encode())
    if s.store.startswith("s3://"):
        bucket = s.store[len("s3://"):].strip("/")
        store = S3Store(s.s3_endpoint, s.s3_access_key, s.s3_secret_key.get_secret_value(), bucket,
                        secure=s.s3_secure, region=s.s3_region, public_endpoint=s.s3_public_endpoint)
        store.ensure_bucket()
        return store
    raise ValueError(f"SAEQ_STORE must start with file:// or s3://, got {s.store!r}")
