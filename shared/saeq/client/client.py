"""Python job client: `saeq.Client("http://127.0.0.1:8000").submit(spec)`."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import BaseModel

from saeq import keys
from saeq.retry import RetryCallState, retrying
from saeq.specs.states import TERMINAL

RETRY_STATUS = (502, 503, 504)
"""Answers that mean "not now" (a restarting API, Redis unreachable): worth repeating a request."""
_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class ApiError(Exception):
    """The API refused a request; `detail` is its explanation (which field, and why)."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {format_detail(detail)}")


class JobFailed(Exception):
    def __init__(self, job: dict):
        self.job = job
        err = job.get("error") or {}
        where = f" ({err['field']})" if err.get("field") else ""
        super().__init__(f"job {job['id']} {job['state']}: {err.get('code', '?')}{where}: {err.get('message', '')}")


def format_detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{d.get('field') or '.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
            if isinstance(d, dict)
            else str(d)
            for d in detail
        )
    return str(detail)


def default_url() -> str:
    """SAEQ_URL, else the stack `saeq up` started, else localhost:8000."""
    if url := os.environ.get("SAEQ_URL"):
        return url
    from saeq.client.stack_file import read_stack_url

    return read_stack_url() or "http://127.0.0.1:8000"


def default_api_key(url: str) -> str | None:
    """SAEQ_API_KEY, else the admin key of the local stack (`saeq up`) serving `url`."""
    if key := os.environ.get("SAEQ_API_KEY"):
        return key
    from saeq.client.stack_file import read_stack_key

    return read_stack_key(url)


class Client:
    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0):
        self.url = (url or default_url()).rstrip("/")
        self.api_key = api_key = api_key or default_api_key(self.url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    retry_for_s: float = 30.0
    """How long a request that is safe to repeat (a GET; a submit, which carries an
    Idempotency-Key) is retried, with backoff, on connection errors and 502/503/504."""

    def _call(self, method: str, path: str, *, retry: bool | None = None, **kw) -> Any:
        """One API request; `retry` (default: GETs only) repeats it while the API is unavailable."""
        if retry is None:
            retry = method == "GET"
        # Past the deadline the last error is raised, or the last 502/503/504 answered below.
        policy = retrying(
            f"{method} {path}",
            deadline_s=self.retry_for_s,
            is_transient=lambda e: isinstance(e, _TRANSIENT),
            is_transient_result=lambda r: r.status_code in RETRY_STATUS,
            once=not retry,
            pause_s=_pause_s,
        )
        resp: httpx.Response = policy(self.http.request, method, path, **kw)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise ApiError(resp.status_code, detail)
        return resp.json() if resp.content else None  # 204: no body

    def submit(
        self,
        spec: dict | BaseModel,
        *,
        depends_on: Sequence[str] = (),
        name: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        time_limit_s: float | None = None,
    ) -> dict:
        """Queue a job; `spec` is a spec model or dict with a `kind`. `priority` (0-9) orders the
        team's jobs waiting for a slot; `time_limit_s` stops the job after that long."""
        if isinstance(spec, BaseModel):
            spec = spec.model_dump(mode="json")
        # Always a key, so a submit repeated after a lost answer returns the job the first made.
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = {
            "spec": spec,
            "depends_on": list(depends_on),
            "name": name,
            "priority": priority,
            "time_limit_s": time_limit_s,
        }
        return self._call("POST", "/v1/jobs", json=body, headers=headers, retry=True)

    def plan(
        self,
        spec: dict | BaseModel,
        *,
        depends_on: Sequence[str] = (),
        priority: int = 0,
        time_limit_s: float | None = None,
    ) -> dict:
        """What the job would cost, without queuing it (`POST /v1/jobs?dry_run=true`, a Plan):
        tokens, bytes to store, peak memory, wall time and GPU-seconds with their basis, the jobs
        ahead of it, and the verdict a submit would get now."""
        if isinstance(spec, BaseModel):
            spec = spec.model_dump(mode="json")
        body = {"spec": spec, "depends_on": list(depends_on), "priority": priority, "time_limit_s": time_limit_s}
        return self._call("POST", "/v1/jobs", params={"dry_run": "true"}, json=body, retry=True)

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def list(self, *, kind: str | None = None, state: str | None = None, limit: int = 50) -> Iterator[dict]:
        """All matching jobs, newest first, fetched a page at a time."""
        before = None
        while True:
            params = {
                k: v
                for k, v in {"kind": kind, "state": state, "limit": limit, "before": before}.items()
                if v is not None
            }
            page = self._call("GET", "/v1/jobs", params=params)
            yield from page["jobs"]
            if page["next_before"] is None:
                return
            before = page["next_before"]

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str, *, after: str = "0-0") -> list[dict]:
        """Every event after `after`, following the API's pages (500 events each)."""
        out: list[dict] = []
        while True:
            page = self._call("GET", f"/v1/jobs/{job_id}/events", params={"after": after})
            out += page["events"]
            # An older API sends neither field: its one page is all it gives.
            if not page.get("more") or not page["events"]:
                return out
            after = page.get("next_after") or page["events"][-1]["id"]

    def artifacts(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/artifacts")

    def upload(self, path: str | Path, *, text_field: str = "text") -> dict:
        path = Path(path)
        with path.open("rb") as f:
            return self._call(
                "POST", "/v1/uploads", params={"text_field": text_field}, files={"file": (path.name, f, "text/plain")}
            )

    def uploads(self, *, limit: int = 500, cursor: str | None = None) -> dict:
        """A page of the team's uploads, oldest first (`next_cursor`, as `cursor`, gets the next),
        the bytes and uploads they count and the team's max_upload_bytes and max_uploads quotas."""
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._call("GET", "/v1/uploads", params=params)

    def iter_uploads(self) -> Iterator[dict]:
        """All the team's uploads, oldest first, fetched a page at a time."""
        cursor = None
        while True:
            page = self.uploads(cursor=cursor)
            yield from page["uploads"]
            if (cursor := page["next_cursor"]) is None:
                return

    def delete_upload(self, upload_id: str) -> None:
        """Delete an upload of the team, freeing its quota."""
        self._call("DELETE", f"/v1/uploads/{upload_id}")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: bool | TextIO = False,
        poll_s: float = 1.0,
        raise_on_failure: bool = True,
    ) -> dict:
        """Block until the job ends; with `progress` (True: stderr, or a stream), show its progress
        (saeq.client.progress: a bar on a terminal, a line every few seconds elsewhere). Raises
        JobFailed unless it succeeded (and `raise_on_failure`). Rides out an unavailable API until
        `timeout`."""
        bar = None
        if progress:
            from saeq.client.progress import JobProgress

            bar = JobProgress(None if progress is True else progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    job = self.get(job_id)
                except (ApiError, *_TRANSIENT) as e:
                    if isinstance(e, ApiError) and e.status not in RETRY_STATUS:
                        raise
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id}: the API is unavailable ({e})") from e
                    time.sleep(poll_s)
                    continue
                if bar is not None:
                    bar.update(job)
                if job["state"] in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and job["state"] != "succeeded":
            raise JobFailed(job)
        return job

    def download(self, job_id: str, dest: str | Path, *, prefix: str = "") -> list[Path]:
        """Download the job's artifacts (those under `prefix`, relative to the job) into `dest`."""
        dest = Path(dest)
        out = []
        for art in self.artifacts(job_id)["artifacts"]:
            rel = art["key"].split(keys.job_prefix(job_id), 1)[1]
            if not rel.startswith(prefix):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with httpx.stream("GET", art["url"], timeout=self.http.timeout) as resp:
                resp.raise_for_status()
                with target.open("wb") as f:
                    for chunk in resp.iter_bytes(1 << 20):
                        f.write(chunk)
            out.append(target)
        return out

    def read(self, job_id: str, path: str) -> bytes:
        """One artifact's bytes, by its path relative to the job (e.g. `labels/labels.jsonl`)."""
        arts = self.artifacts(job_id)["artifacts"]  # first: a bad id is the API's 404, not a ValueError here
        key = keys.job_prefix(job_id) + path
        art = next((a for a in arts if a["key"] == key), None)
        if art is None:
            raise ApiError(404, f"job {job_id} has no artifact {path}")
        resp = httpx.get(art["url"], timeout=self.http.timeout)
        resp.raise_for_status()
        return resp.content

    def labels(self, job_id: str) -> list[dict]:
        """A label job's labels.jsonl: one dict per (feature, explainer)."""
        return [json.loads(line) for line in self.read(job_id, "labels/labels.jsonl").splitlines() if line.strip()]

    def steer(self, request: dict | BaseModel) -> dict:
        """`POST /v1/steer`: a steered completion with the default one beside it (a SteerRequest)."""
        if isinstance(request, BaseModel):
            request = request.model_dump(mode="json")
        return self._call("POST", "/v1/steer", json=request, timeout=max(self.http.timeout.read or 0, 300))

    def inspect(
        self,
        train_job: str,
        text: str | None = None,
        *,
        messages: list[dict] | None = None,
        top_k: int = 5,
        features: list[int] | None = None,
        sae_name: str | None = None,
        label_job: str | None = None,
    ) -> dict:
        """`POST /v1/features/inspect`: per token of `text` (or a chat), its top features with
        activation, label and feature page, and the activations of `features` (an InspectResult)."""
        body: dict[str, Any] = {"sae": {"job_id": train_job, "name": sae_name}, "top_k": top_k}
        body.update({"text": text} if messages is None else {"messages": messages})
        if features:
            body["features"] = list(features)
        if label_job:
            body["label_job"] = label_job
        return self._call("POST", "/v1/features/inspect", json=body, timeout=max(self.http.timeout.read or 0, 300))

    def contrast(
        self,
        train_job: str,
        a: list[str] | dict,
        b: list[str] | dict,
        *,
        top_k: int = 10,
        aggregate: str = "max",
        max_tokens: int = 128,
        held_out: float = 0.5,
        seed: int = 0,
        sae_name: str | None = None,
        label_job: str | None = None,
    ) -> dict:
        """`POST /v1/features/contrast`: the features that separate texts `a` from texts `b` (each a
        list of texts, or a TextSet such as {"corpus": "wiki-en", "topic": "People"}), with
        held-out AUROC and Cohen's d and their intervals (a ContrastResult)."""
        body: dict[str, Any] = {
            "sae": {"job_id": train_job, "name": sae_name},
            "a": {"texts": a} if isinstance(a, list) else a,
            "b": {"texts": b} if isinstance(b, list) else b,
            "top_k": top_k,
            "aggregate": aggregate,
            "max_tokens": max_tokens,
            "held_out": held_out,
            "seed": seed,
        }
        if label_job:
            body["label_job"] = label_job
        return self._call("POST", "/v1/features/contrast", json=body, timeout=max(self.http.timeout.read or 0, 300))

    def compare(
        self,
        job_a: str,
        job_b: str,
        *,
        name_a: str | None = None,
        name_b: str | None = None,
        max_tokens: int = 16_384,
        seed_floor: str | Mapping[str, Any] = "auto",
        noise_floor: Mapping[str, float] | None = None,
        min_cosine: float = 0.7,
        min_correlation: float = 0.5,
        depends_on: Sequence[str] = (),
        wait: bool = False,
        timeout: float | None = None,
        progress: bool | TextIO = False,
    ) -> dict:
        """`POST /v1/compare`: queue an evaluate job comparing SAE A (of train job `job_a`) with B on
        the same held-out contexts; -> the job, or with `wait` its manifest's `comparison` (a
        saeq.specs.compare.Comparison: per metric the paired difference, its interval and verdict;
        the matched features and the stable fraction). `seed_floor`: 'auto', 'off', the id of a train
        job with `seeds` or {job_id, config}: whose seeds give the noise floor (saeq.specs.compare.SeedFloor)."""
        if isinstance(seed_floor, str) and seed_floor not in ("auto", "off"):
            seed_floor = {"job_id": seed_floor}
        body: dict[str, Any] = {
            "a": {"job_id": job_a, "name": name_a},
            "b": {"job_id": job_b, "name": name_b},
            "max_tokens": max_tokens,
            "seed_floor": seed_floor if isinstance(seed_floor, str) else dict(seed_floor),
            "noise_floor": dict(noise_floor or {}),
            "min_cosine": min_cosine,
            "min_correlation": min_correlation,
            "depends_on": list(depends_on),
        }
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        job = self._call("POST", "/v1/compare", json=body, headers=headers, retry=True)
        if not wait:
            return job
        self.wait(job["id"], timeout=timeout, progress=progress)
        return self.manifest(job["id"])["comparison"]

    def search_labels(self, label_job: str, query: str, *, top: int = 10) -> list[dict]:
        """Features of a label job whose labels are closest in meaning to `query`, best first."""
        return self._call(
            "POST",
            "/v1/labels/search",
            json={"label_job": label_job, "query": query, "top": top},
            timeout=max(self.http.timeout.read or 0, 300),
        )["results"]

    # ---- teams and keys ---------------------------------------------------------------------

    def me(self) -> dict:
        """The caller's team, role, quota and use."""
        return self._call("GET", "/v1/me")

    def create_key(self, team: str, *, role: str = "member", name: str = "") -> dict:
        """(admin) A new API key for `team`; its `key` appears in this answer only."""
        return self._call("POST", "/v1/admin/keys", json={"team": team, "role": role, "name": name})

    def keys(self, team: str | None = None) -> list[dict]:
        """(admin) Public records of the keys (never the keys)."""
        return self._call("GET", "/v1/admin/keys", params={"team": team} if team else {})

    def revoke_key(self, key_id: str) -> dict:
        return self._call("DELETE", f"/v1/admin/keys/{key_id}")

    def teams(self) -> list[dict]:
        """(admin) Every team with its quota and use."""
        return self._call("GET", "/v1/admin/teams")

    def set_quota(self, team: str, **quota) -> dict:
        """(admin) Replace a team's quota; fields left out take their defaults (saeq.platform.teams.TeamQuota)."""
        return self._call("PUT", f"/v1/admin/teams/{team}/quota", json=quota)

    def purge(self, *, team: str | None = None, ended_before: float | None = None) -> dict:
        """(admin) Delete ended jobs' records now (of `team`, or every team's) that ended before
        `ended_before` (Unix seconds; default: all): {purged, job_ids}. Artifacts stay."""
        return self._call("POST", "/v1/admin/purge", json={"team": team, "ended_before": ended_before})

    def manifest(self, job_id: str) -> dict:
        arts = self.artifacts(job_id)
        if not arts["published"]:
            raise ApiError(409, f"job {job_id} has no manifest yet")
        url = next(a["url"] for a in arts["artifacts"] if a["key"] == arts["manifest_key"])
        resp = httpx.get(url, timeout=self.http.timeout)
        resp.raise_for_status()
        return resp.json()


def _pause_s(state: RetryCallState) -> float:
    """The pause after a failed try: `_backoff_s`, honouring the Retry-After of a 502/503/504."""
    outcome = state.outcome
    answer = outcome.result() if outcome is not None and not outcome.failed else None
    retry_after = answer.headers.get("Retry-After") if isinstance(answer, httpx.Response) else None
    return _backoff_s(state.attempt_number - 1, retry_after)


def _backoff_s(attempt: int, retry_after: str | None = None) -> float:
    """0.25 s doubling to 4 s, or what the server's Retry-After asks (at most 10 s)."""
    if retry_after is not None:
        try:
            return min(10.0, float(retry_after))
        except ValueError:
            pass  # an HTTP date, or garbage: our own backoff
    return min(4.0, 0.25 * 2**attempt)
