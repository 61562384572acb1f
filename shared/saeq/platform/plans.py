"""Cost plans: what a job would cost before it is queued (`POST /v1/jobs?dry_run=true`).

Tokens and bytes come from the spec; wall time and device-seconds from the end-to-end rate of
finished jobs of the same kind, model and size bucket (the team's own first, else every team's),
read from the newest records of FINISHED, a bounded scan, with each job's recorded start-up kept
out of the rate (saeq.platform.plan_startup: cold or warm); the place in line from the fair-share
scheduler (saeq.platform.scheduler.jobs_ahead). Nothing here writes (but the live worker ads'
read drops expired ones). No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from saeq import keys
from saeq.platform import redis_keys, scheduler
from saeq.platform.plan_startup import live_hosts, predict_startup
from saeq.platform.store import MissingObject
from saeq.specs import BUILTIN_D_MODEL, BUILTIN_MODEL
from saeq.specs.quotas import TeamQuota
from saeq.specs.scheduling import MemoryEstimate, Plan, PlanBasis, QuotaVerdict

HISTORY_SCAN = 1_000
"""Newest finished jobs (of every kind) read at most for one plan: the lookup stays bounded."""
HISTORY_JOBS = 200
"""Finished jobs of the plan's kind kept from the scan."""
_BATCH = 200
_SAMPLE_FIELDS = ("id", "team", "spec", "started_at", "finished_at", "progress", "worker")

SHARD_ROW_EXTRA_BYTES = 16
"""Per token and hook a shard holds beside the activations: token_ids, doc_ids, positions (int32)
and norms (float32), 4 bytes each (saeq.jobs.harvest.harvest_shard)."""
SHARD_MANIFEST_BYTES = 400
"""A shard's entry in the harvest manifest per hook (key, size, sha256, metadata), about."""
MANIFEST_BYTES = 4_096
"""A job's manifest beyond its per-shard or per-file entries, about."""
SMALL_JOB_BYTES = 1 << 20
"""Evaluate, label and steer jobs store a report, labels or texts: about this much, at most a few MB."""


@dataclass(frozen=True)
class Sample:
    """One finished job as a plan reads it."""

    job_id: str
    team: str
    model: str | None
    bucket: str
    tokens: int
    wall_s: float
    devices: int
    worker: str | None = None
    """"host:pid" of the process that ran it."""
    startup_s: float | None = None
    """Seconds before its first token (model load included), where the worker recorded it."""
    model_load_s: float | None = None
    """Seconds of the start-up spent loading the model into the process (about 0 when warm)."""
    cold: bool | None = None
    """Whether it loaded its model (a cold start) or found it loaded; None: no model, or unrecorded."""


def work_tokens(spec: dict) -> int:
    """Tokens the job reads or trains on, from its spec (a steer job: the tokens it generates)."""
    kind = spec["kind"]
    if kind == "train":
        return int(spec["total_tokens"])
    if kind == "label":
        return int(spec["index_tokens"])
    if kind == "steer":
        per_prompt = 1 + len(spec["interventions"]) * len(spec["strengths"])  # the default and each steered run
        if spec.get("calibrate"):  # at most: every multiple on a prompt, and the two held-out arms
            cal = spec["calibrate"]
            per_prompt += len(cal["features"]) * (len(cal["multiples"]) + 2)
        return len(spec["prompts"]) * per_prompt * int(spec["max_new_tokens"])
    return int(spec["max_tokens"])  # harvest, evaluate


def devices(spec: dict) -> int:
    """Devices the job holds while it runs."""
    return int(spec.get("gpus", 1)) if spec["kind"] == "train" else 1


def _pow2_range(n: int) -> str:
    lo = 1 << max(0, int(n).bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


def size_bucket(spec: dict) -> str:
    """Jobs in one bucket run at about one rate per token: a harvest's context length, a
    training's width (its SAEs' d_sae summed) by powers of two; other kinds have one bucket."""
    if spec["kind"] == "harvest":
        return f"context_len {_pow2_range(spec['context_len'])}"
    if spec["kind"] == "train":
        saes = spec["saes"]
        if all(s.get("d_sae") for s in saes):
            return f"d_sae {_pow2_range(sum(s['d_sae'] for s in saes))}"
        return f"expansion_factor {sum(s.get('expansion_factor') or 0 for s in saes)} (summed)"
    return ""


def _reference(spec: dict) -> str | None:
    """The job whose output this spec reads, where its model comes from."""
    if spec.get("kind") == "train":
        a = spec.get("activations") or {}
        return None if a.get("source") == "online" else a.get("job_id")
    sae = spec.get("sae")
    return sae.get("job_id") if isinstance(sae, dict) and sae.get("source", "job") == "job" else None


def _own_model(spec: dict) -> str | None:
    """The model a harvest or an online training reads itself (None: another kind, or no model)."""
    if spec.get("kind") == "harvest":
        return (spec.get("model") or {}).get("name")
    a = spec.get("activations") or {}
    return (a.get("model") or {}).get("name") if spec.get("kind") == "train" and a.get("source") == "online" else None


def resolve_models(r, specs: Sequence[dict | None]) -> list[str | None]:
    """The model each spec's activations come from: its own, or (two hops at most: an evaluation's
    training's harvest) the job it reads. None where a record expired or the SAE is imported."""
    models: list[str | None] = [None if s is None else _own_model(s) for s in specs]
    pending = {i: s for i, s in enumerate(specs) if s is not None and models[i] is None}
    for _ in range(2):
        refs = {i: ref for i, s in pending.items() if (ref := _reference(s))}
        if not refs:
            break
        pipe = r.pipeline(transaction=False)
        for ref in refs.values():
            pipe.hget(redis_keys.job(ref), "spec")
        pending = {}
        for i, raw in zip(refs, pipe.execute(), strict=True):
            spec = json.loads(raw) if raw else None
            if spec is None:  # expired, or its spec lives in the object store
                continue
            if (model := _own_model(spec)) is not None:
                models[i] = model
            else:
                pending[i] = spec
    return models


def history(r, kind: str, *, scan: int = HISTORY_SCAN, keep: int = HISTORY_JOBS) -> list[Sample]:
    """Succeeded jobs of `kind`, newest first: at most `keep` of the newest `scan` finished jobs.
    A job that was preempted is left out: its wall clock holds the time it waited in between.
    Kind and state are read first (a few bytes a job), the whole sample only of those that match."""
    wanted = (json.dumps(kind), json.dumps("succeeded"))
    matching: list[str] = []
    for start in range(0, scan, _BATCH):  # newest first, until `keep` match
        ids = cast(list[str], r.zrevrange(redis_keys.FINISHED, start, min(scan, start + _BATCH) - 1))
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(redis_keys.job(job_id), "kind", "state", "preemptions")
        matching += [
            job_id
            for job_id, (k, state, preemptions) in zip(ids, pipe.execute(), strict=True)
            if (k, state) == wanted and not (preemptions and json.loads(preemptions))
        ]
        if len(matching) >= keep or len(ids) < _BATCH:
            break
    matching = matching[:keep]
    pipe = r.pipeline(transaction=False)
    for job_id in matching:
        pipe.hmget(redis_keys.job(job_id), *_SAMPLE_FIELDS)
    found: list[tuple[dict, dict]] = []
    for raw in pipe.execute():
        job = {f: json.loads(v) for f, v in zip(_SAMPLE_FIELDS, raw, strict=True) if v is not None}
        if job.get("spec") and job.get("started_at") and job.get("finished_at"):
            found.append((job, job["spec"]))
    models = resolve_models(r, [spec for _, spec in found])
    samples = []
    for (job, spec), model in zip(found, models, strict=True):
        figures = (job.get("progress") or {}).get("figures") or {}
        try:
            tokens = int(figures.get("tokens") or work_tokens(spec))
            bucket, n_devices = size_bucket(spec), devices(spec)
            wall_s = float(job["finished_at"]) - float(job["started_at"])
        except (KeyError, TypeError, ValueError):  # a record of another schema: no basis, not an error
            continue
        if tokens > 0 and wall_s > 0:
            sample = Sample(job["id"], job.get("team") or "default", model, bucket, tokens, wall_s, n_devices)
            samples.append(_with_startup(sample, job.get("worker"), figures))
    return samples


def _with_startup(sample: Sample, worker: str | None, figures: dict) -> Sample:
    """`sample` with the start-up its worker recorded (saeq_worker.harvest), where it is sane."""
    startup, load, cold = (figures.get(k) for k in ("startup_s", "model_load_s", "cold_start"))
    worker = worker if isinstance(worker, str) else None
    if not (isinstance(startup, int | float) and 0 <= startup < sample.wall_s):
        return dataclasses.replace(sample, worker=worker)
    return dataclasses.replace(
        sample,
        worker=worker,
        startup_s=float(startup),
        model_load_s=float(load) if isinstance(load, int | float) else None,
        cold=bool(cold) if isinstance(cold, int | float) else None,
    )


@dataclass(frozen=True)
class Prediction:
    wall_s: float | None
    gpu_s: float | None
    basis: PlanBasis | None
    basis_text: str


def _describe(kind: str, model: str | None, bucket: str, n: int = 1) -> str:
    on = f"on model {model}" if model else "on an unknown model"
    return f"{kind} job{'s' if n > 1 else ''} {on}{', ' + bucket if bucket else ''}"


def predict(
    samples: Sequence[Sample],
    *,
    kind: str,
    team: str,
    model: str | None,
    bucket: str,
    tokens: int,
    n_devices: int,
    hosts: frozenset[str] = frozenset(),
) -> Prediction:
    """Wall time and device-seconds of a job of `tokens` from finished jobs alike: the team's own
    if it has any, else every team's. wall = startup + tokens / rate: where they recorded their
    start-ups, the start-up predicted cold or warm (`hosts`: those with a live worker of the
    queue; saeq.platform.plan_startup) and the rate the median over the time after start-up of
    those of that start (where there are any);
    else fitted where jobs of two or more sizes allow it (and the fit is sane); else tokens /
    (their median rate)."""
    alike = [s for s in samples if s.model == model and s.bucket == bucket]
    own = [s for s in alike if s.team == team]
    chosen, scope = (own, "team") if own else (alike, "cluster")
    if not chosen:
        return Prediction(None, None, None, f"no finished {_describe(kind, model, bucket)} to go on")
    whose = f"of team {team}" if scope == "team" else "of all teams"
    text = f"{len(chosen)} succeeded {_describe(kind, model, bucket, len(chosen))} {whose}"
    newest = next(s for s in samples if s.model == model)  # any size or team: its worker has the model
    startup = predict_startup(chosen, newest, hosts)
    if startup is not None:
        basis_jobs = startup.samples
        work_rate = statistics.median(s.tokens / (s.wall_s - (s.startup_s or 0.0)) for s in basis_jobs)
        wall_s = startup.seconds + tokens / work_rate
        basis = PlanBasis(
            scope=scope,
            job_ids=[s.job_id for s in basis_jobs],
            n_jobs=len(basis_jobs),
            median_tokens_per_s=statistics.median(s.tokens / s.wall_s for s in basis_jobs),
            median_gpu_s_per_token=statistics.median(s.devices * s.wall_s / s.tokens for s in basis_jobs),
            startup_s=startup.seconds,
            work_tokens_per_s=work_rate,
            cold_start=startup.cold,
        )
        text += f", median {work_rate:,.0f} tok/s after start-up; {startup.text}"
        return Prediction(wall_s, wall_s * n_devices, basis, text)
    rate = statistics.median(s.tokens / s.wall_s for s in chosen)
    gpu_per_token = statistics.median(s.devices * s.wall_s / s.tokens for s in chosen)
    fit = _fit_startup(chosen)
    if fit is not None:
        startup_s, rate_fit = fit
        wall_s = startup_s + tokens / rate_fit
        gpu_s = wall_s * n_devices
    else:
        startup_s, wall_s, gpu_s = None, tokens / rate, tokens * gpu_per_token
    text += f", median {rate:,.0f} tok/s"
    if fit is not None:
        sizes = len({s.tokens for s in chosen})
        text += f"; fitted over {sizes} sizes: {fit[0]:,.1f} s startup + tokens / {fit[1]:,.0f} tok/s"
    basis = PlanBasis(
        scope=scope,
        job_ids=[s.job_id for s in chosen],
        n_jobs=len(chosen),
        median_tokens_per_s=rate,
        median_gpu_s_per_token=gpu_per_token,
        startup_s=startup_s,
    )
    return Prediction(wall_s, gpu_s, basis, text)


def _fit_startup(samples: Sequence[Sample]) -> tuple[float, float] | None:
    """(startup_s, tokens_per_s) of the least-squares line wall = startup + tokens / rate, over
    samples of two or more sizes; None when there are fewer or the line is no cost model (a
    negative startup or a rate that is not positive)."""
    xs = [float(s.tokens) for s in samples]
    if len(set(xs)) < 2:
        return None
    ys = [s.wall_s for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    startup = my - slope * mx
    if slope <= 0 or startup < 0:
        return None
    return startup, 1.0 / slope


def harvest_d_model(samples: Sequence[Sample], model: str | None, read_manifest: Callable[[str], dict]) -> int | None:
    """A harvest's d_model before it runs: the builtin's is known; another model's is read from the
    manifest of the newest finished harvest of it (one store read), None when there is none."""
    if model == BUILTIN_MODEL:
        return BUILTIN_D_MODEL
    for s in samples:
        if s.model == model:
            try:
                return int(read_manifest(keys.manifest(s.job_id))["d_model"])
            except (MissingObject, KeyError, ValueError, TypeError):
                return None  # unreadable or purged: the plan says the bytes are unknown
    return None


def bytes_to_store(spec: dict, d_in: int | None) -> tuple[int | None, str]:
    """(bytes, formula) the job's artifacts take in the store; bytes None while d_in (a harvest's
    d_model, a training's activations' width) is unknown and the spec needs it."""
    kind = spec["kind"]
    if kind == "harvest":
        tokens, hooks = int(spec["max_tokens"]), len(spec["hooks"])
        if d_in is None:
            return None, "tokens x hooks x d_model x dtype bytes: d_model unknown before a harvest of this model"
        dtype_bytes = 2 if spec.get("dtype", "bfloat16") == "bfloat16" else 4
        shards = math.ceil(tokens / int(spec["shard_tokens"]))
        row = d_in * dtype_bytes + SHARD_ROW_EXTRA_BYTES
        total = tokens * hooks * row + shards * hooks * SHARD_MANIFEST_BYTES + MANIFEST_BYTES
        return total, (
            f"{tokens:,} tokens x {hooks} hooks x ({d_in} d_model x {dtype_bytes} bytes + "
            f"{SHARD_ROW_EXTRA_BYTES} of token, doc, position and norm) + {shards:,} shards' manifest entries"
        )
    if kind == "train":
        return _train_bytes(spec, d_in)
    return SMALL_JOB_BYTES, f"a {kind} job stores a report, labels or texts: about 1 MiB"


def _train_bytes(spec: dict, d_in: int | None) -> tuple[int | None, str]:
    """Each SAE's float32 parameters (W_enc, W_dec, b_enc, b_dec) once per export format (SAELens,
    and sparsify's for TopK), and every checkpoint kept: parameters plus Adam's two moments."""
    if d_in is None:
        return None, "SAE weights and checkpoints: the activations' width (d_in) is unknown before their harvest ends"
    params, exported = 0, 0
    for s in spec["saes"]:
        d_sae = s.get("d_sae") or s["expansion_factor"] * d_in
        n = 2 * d_in * d_sae + d_sae + d_in
        params += n
        exported += n * (2 if s.get("architecture", "topk") == "topk" else 1)
    every = spec.get("checkpoint_every_tokens")
    checkpoints = int(spec["total_tokens"]) // every if every else 0
    total = 4 * exported + checkpoints * 3 * 4 * params + MANIFEST_BYTES
    return total, (
        f"{exported:,} exported parameters x 4 bytes (SAELens, and sparsify for TopK) + {checkpoints} "
        f"checkpoints x 3 x {params:,} parameters x 4 bytes (weights and Adam's two moments)"
    )


def queue_refusals(r, team: str, quota: TeamQuota, *, now: float | None = None) -> list[dict[str, str | None]]:
    """The 429s the create script would answer now (saeq.platform.lua_scripts.CREATE), read only:
    submits in the last 60 s, jobs waiting, records stored."""
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=False)
    pipe.zcount(redis_keys.team(team, "submits"), now - 60, "+inf")
    pipe.scard(redis_keys.team(team, "open"))
    pipe.scard(redis_keys.team(team, "active"))
    pipe.zcard(redis_keys.team(team, "jobs"))
    pipe.zcount(redis_keys.team(team, "ended"), "-inf", now)
    submits, open_, active, stored, expired = pipe.execute()
    limits = [
        (submits >= quota.submits_per_minute, f"made {submits} submits in the last 60 s", "submits_per_minute"),
        (open_ - active >= quota.max_queued, f"already has {open_ - active} jobs waiting to run", "max_queued"),
        (stored - expired >= quota.max_stored_jobs, f"already stores {stored - expired} jobs", "max_stored_jobs"),
    ]
    return [
        _reason(f"team {team!r} {what} (quota {name}={getattr(quota, name)})") for over, what, name in limits if over
    ]


def _reason(message: str, field: str | None = None) -> dict[str, str | None]:
    return {"field": field, "message": message}


def verdict(
    refusal: tuple[int, list[dict[str, str | None]]] | None, queue_full: list[dict[str, str | None]]
) -> QuotaVerdict:
    """The answer a submit would get: the status of the checks before the record (422 or 403,
    `refusal`) if they refuse it, else the create script's 429; every reason found either way."""
    reasons = (refusal[1] if refusal else []) + queue_full
    if not reasons:
        return QuotaVerdict(allowed=True)
    return QuotaVerdict(allowed=False, status=refusal[0] if refusal else 429, reasons=reasons)


def jobs_ahead(registry, team: str, priority: int, queue: str) -> tuple[int, str]:
    """(jobs that would start first, how that was counted): the fair-share scheduler's order."""
    ahead = scheduler.jobs_ahead(registry, team, priority, queue)
    return ahead, f"waiting jobs the fair-share scheduler would start first on queue {queue}"


def plan_job(
    registry,
    spec: dict,
    *,
    team: str,
    priority: int,
    queue: str,
    quota: TeamQuota,
    refusal: tuple[int, list[dict[str, str | None]]] | None,
    peak_memory: MemoryEstimate | None,
    d_in: int | None,
    read_manifest: Callable[[str], dict],
) -> Plan:
    """The plan of `spec` (a JSON-mode dump) for `team`. `refusal`: what the submit checks before the
    record answered (status, reasons), None if they passed; `d_in`: a harvest's d_model or a
    training's activations' width, when known; `read_manifest`: a store read, for a harvest
    model's d_model otherwise (from a finished harvest of that model)."""
    kind = spec["kind"]
    samples = history(registry.r, kind)
    (model,) = resolve_models(registry.r, [spec])
    tokens = work_tokens(spec)
    guess = predict(
        samples,
        kind=kind,
        team=team,
        model=model,
        bucket=size_bucket(spec),
        tokens=tokens,
        n_devices=devices(spec),
        hosts=live_hosts(registry.r, queue),
    )
    if kind == "harvest" and d_in is None:
        d_in = harvest_d_model(samples, model, read_manifest)
    stored, formula = bytes_to_store(spec, d_in)
    ahead, ahead_basis = jobs_ahead(registry, team, priority, queue)
    return Plan(
        kind=kind,
        team=team,
        queue=queue,
        tokens=tokens,
        bytes_to_store=stored,
        bytes_formula=formula,
        peak_memory=peak_memory,
        wall_s=guess.wall_s,
        gpu_s=guess.gpu_s,
        basis=guess.basis,
        basis_text=guess.basis_text,
        jobs_ahead=ahead,
        jobs_ahead_basis=ahead_basis,
        verdict=verdict(refusal, queue_refusals(registry.r, team, quota)),
    )
