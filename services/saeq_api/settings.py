"""API deployment settings (SAEQ_* environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from saeq.platform.settings import PlatformSettings
from saeq.platform.teams import TeamQuota


class ApiSettings(PlatformSettings):
    reap_every_s: float = Field(default=5.0, gt=0)
    """How often the API looks for running jobs whose worker was lost."""
    max_upload_bytes: int = 512 << 20
    """Largest corpus file accepted by `POST /v1/uploads` (413 beyond). The API spools it to a
    temporary file and streams it to the store, so this bounds temporary disk, not memory; what a
    team may keep stored in all is its quota's `max_upload_bytes`."""
    max_request_bytes: int = Field(default=1 << 20, gt=0)
    """Largest request body of every other route (a job spec is a few KB); larger ones get 413,
    counted as they stream in when they declare no length."""
    live_timeout_s: float = Field(default=120.0, gt=0)
    """How long `POST /v1/steer`, `/v1/chat/completions` and `/v1/labels/search` wait for a
    worker's answer. Then (or when the client disconnects first) the answer is 504 and the request
    is cancelled: taken out of its queue, or stopped by its worker between tokens. A team's live
    slot (quota live_concurrency) is freed at once, or this + 30 s after an API that died took it."""
    auth: Literal["keys", "off"] = "keys"
    """`keys`: every /v1 request carries `Authorization: Bearer <API key>` and sees only its team's
    jobs. `off`: no keys; everyone is an admin of team `default` (a one-person machine only)."""
    bootstrap_admin_key: SecretStr | None = None
    """An admin key the API stores (hashed) at start, for the first `saeq keys create`; make one
    with `saeq keys new`. Team `admin`."""
    default_quota: TeamQuota = TeamQuota()
    """Quota of every team without its own (JSON, e.g. {"max_running": 2}); admins set per-team
    quotas with `PUT /v1/admin/teams/{team}/quota`."""
    metrics_token: SecretStr | None = None
    """When set, `GET /metrics` needs `Authorization: Bearer <token>` (401 otherwise): the metrics
    name every team and its job counts. Unset: anyone who reaches the API can scrape it."""
    metrics_cache_s: float = Field(default=5.0, ge=0)
    """A scrape is computed at most this often per API process (it reads a few fields of every
    stored job); scrapes in between get the same answer. 0: every scrape reads Redis."""
