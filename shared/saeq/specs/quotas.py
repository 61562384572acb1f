"""A team's quota: what one team may use at once, per job and per minute. A contract (pydantic
only): the platform stores it in Redis (saeq.platform.teams), saeq.specs.costs checks jobs against it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TeamQuota(BaseModel):
    """What one team may use. Jobs beyond `max_running` wait their turn; beyond the others they are
    refused at submit, with the reason. The per-job limits (403) are checked by `saeq.specs.costs`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    max_running: int = Field(default=4, ge=0, le=10_000)
    """Jobs of the team dispatched to workers at once; the rest wait, highest priority first."""
    max_queued: int = Field(default=200, ge=0, le=1_000_000)
    """Jobs of the team waiting to run (for a slot, or for their dependencies); more are refused (429)."""
    max_tokens: int = Field(default=100_000_000, gt=0)
    """Tokens one job may read: a harvest's or evaluation's max_tokens, a training's total_tokens,
    a label job's index_tokens (403 beyond)."""
    max_latents: int = Field(default=1 << 20, gt=0)
    """Latents (d_sae) a train job may create, summed over its SAEs: every batch feeds every one
    (403 beyond, naming the SAE's width field, or `spec.saes` for the sum)."""
    max_time_s: float = Field(default=24 * 3600.0, gt=0)
    """Longest a job may run, and the time limit of a job that asks for none (403 beyond)."""
    max_stored_jobs: int = Field(default=1_000, ge=0, le=1_000_000)
    """Job records of the team kept in Redis, in any state; ended ones expire after the
    deployment's `job_retention_s` (or an admin purge). A submit beyond it is refused (429)."""
    submits_per_minute: int = Field(default=120, ge=0, le=1_000_000)
    """Job submits the team may make in any 60 s (429 with Retry-After beyond). Uploads
    (`POST /v1/uploads`) count against the same number in a window of their own."""
    max_job_cost: int = Field(default=1_000_000_000, gt=0)
    """What one job may cost as a whole, in token-units (one: a token read in a batch at one hook):
    a harvest's max_tokens x hooks; a training's total_tokens x its SAEs' latents summed / 16,384;
    an evaluation's max_tokens x 3 (three passes per batch) plus, per check, its articles x
    checks.context_len; a label job's index_tokens plus features x each LLM explainer's
    max_new_tokens x 200 plus features x judge questions (3 x n_score_examples) x 256; a steer
    job's prompts x (1 + sets x strengths) generations x max_new_tokens x 200 (a generated token
    holds the worker about 200 times as long) plus their prompts (4 characters a token). 403
    beyond, naming the factor nearest its own limit in the spec (e.g. `spec.hooks`, `spec.saes`,
    `spec.prompts`). The demo's largest job, its training, costs 691,200 (its evaluation 540,672,
    its label job 415,744)."""
    max_batch_tokens: int = Field(default=65_536, gt=0)
    """Tokens of one forward pass a job may ask for: batch_size x context_len of a harvest, of an
    evaluate or label job (its own context_len, or its harvest's for a trained SAE) and of an
    evaluation's checks, capped by the job's own tokens. A pass holds the worker, and a cancel
    waits for it (403 beyond, naming `spec.batch_size` or `spec.checks.batch_size`)."""
    max_upload_bytes: int = Field(default=8 << 30, ge=0)
    """Bytes of uploaded corpora the team may keep in the store at once (413 beyond); delete
    uploads with `DELETE /v1/uploads/{id}`."""
    max_uploads: int = Field(default=1_000, ge=0, le=1_000_000)
    """Uploads the team may keep at once, stored or being stored (429 beyond): each costs a Redis
    record and a store object whatever its size."""
    share_weight: float = Field(default=1.0, gt=0, le=1_000_000)
    """The team's weight in the fair-share scheduler (saeq.platform.scheduler): among teams with
    work waiting, its target fraction of the devices is its weight over the active teams' sum, and
    the team with the least decayed device-seconds per unit of weight is served first."""
    preemptible: bool = True
    """Its running jobs may be asked to yield their worker (checkpointed, queued again) for a job
    of higher priority or of a team far under its share; False: they always run to their end."""
    may_preempt: bool = True
    """Its waiting jobs may have other jobs preempted for them; False: they only take free slots."""
    live_concurrency: int = Field(default=2, ge=0, le=1_000)
    """Live requests of the team (steer, chat, label search) being computed or waiting at once
    (429 with Retry-After beyond). Whatever it is, the steer workers take the waiting requests of
    all teams in turn, one per team, so one team's queue never delays another's by more than one
    request each."""
    live_per_minute: int = Field(default=60, ge=0, le=1_000_000)
    """Live requests (steer, chat, label search) the team may start in any 60 s (429 with
    Retry-After: when the oldest of them leaves the window)."""
    live_prompt_tokens: int = Field(default=2_048, ge=1, le=1_000_000)
    """Longest prompt (in model tokens, chat template included) of a live steer or chat request:
    422 naming `prompt` or `messages`, from the worker, which counts the tokens; the API refuses at
    once a text longer than 16 characters a token (saeq.platform.live.MAX_CHARS_PER_TOKEN)."""
