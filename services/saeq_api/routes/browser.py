"""The feature browser: a static page (no build step) and the JSON it reads. SAEs with their
evaluation summary, a searchable, sortable, paginated feature list and feature pages, all from
what train, evaluate and label jobs published. Jobs and steering use the API's own routes."""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from saeq import keys
from saeq.platform.store import MissingObject
from saeq.platform.teams import Principal
from saeq_api import calibrated
from saeq_api.deps import Caller, Services, services
from saeq_api.schemas import errors

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["browser"], responses=errors(401, 404, 409, 503))
Svc = Annotated[Services, Depends(services)]


class _Cache:
    """Parsed JSON objects by key (artifacts are write-once, so nothing goes stale)."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, store, key: str, parse=json.loads):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = parse(store.get(key))
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_CACHE = _Cache(64)


@router.get("/browse", include_in_schema=False)
def browser_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/browse/static/{name}", include_in_schema=False)
def browser_asset(name: str) -> FileResponse:
    path = STATIC / name
    if name not in {p.name for p in STATIC.iterdir()} or not path.is_file():
        raise HTTPException(404, "no such file")
    return FileResponse(path)


def _manifest(svc: Services, job: dict) -> dict | None:
    if job["state"] != "succeeded" or not job.get("manifest_key"):
        return None
    try:
        return _CACHE.get(svc.store, job["manifest_key"])
    except MissingObject:
        return None


@router.get("/v1/browser/saes")
def list_saes(svc: Svc, who: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    """The team's trained SAEs (an admin's: every team's), newest first, each with its latest
    evaluation and its label jobs."""
    team = None if who.is_admin else who.team
    evaluations: dict[tuple[str, str | None], dict] = {}
    labels: dict[str, list[dict]] = {}
    for job in svc.registry.list(kind="evaluate", state="succeeded", limit=500, team=team):
        m = _manifest(svc, job)
        if m and m["sae"].get("source") == "job":
            evaluations.setdefault(
                (m["sae"]["job_id"], m["sae"]["name"]),
                _finite(
                    {
                        "job_id": job["id"],
                        "metrics": m["metrics"],
                        "intervals": m.get("intervals"),
                        "checks": m.get("checks"),
                    }
                ),
            )
    for job in svc.registry.list(kind="label", state="succeeded", limit=500, team=team):
        sae = job["spec"]["sae"]
        if sae.get("source", "job") == "job":
            m = _manifest(svc, job)
            labels.setdefault(sae["job_id"], []).append(
                {
                    "job_id": job["id"],
                    "sae": sae.get("name") or (m or {}).get("sae", {}).get("name"),
                    "n_features": (m or {}).get("n_features"),
                    "browsable": bool(m and m.get("browser")),
                }
            )
    out = []
    for job in svc.registry.list(kind="train", state="succeeded", limit=limit, team=team):
        m = _manifest(svc, job)
        if m is None:
            continue
        for name, info in m["saes"].items():
            out.append(
                {
                    "train_job": job["id"],
                    "name": name,
                    "job_name": job.get("name"),
                    "d_in": info["d_in"],
                    "d_sae": info["d_sae"],
                    "architecture": info["architecture"],
                    "hook": m["harvest"]["hook"],
                    "model": m["harvest"]["model"].get("name"),
                    "train_metrics": info.get("metrics"),
                    "evaluation": evaluations.get((job["id"], name)),
                    "label_jobs": [lj for lj in labels.get(job["id"], []) if lj["sae"] in (None, name)],
                }
            )
    return {"saes": out}


def _browsable(svc: Services, label_job: str, who: Principal) -> dict:
    job = svc.registry.get(label_job) if len(label_job) == 32 else None
    if job is None or job["kind"] != "label" or not who.sees(job):
        raise HTTPException(404, f"no label job {label_job}")
    m = _manifest(svc, job)
    if m is None:
        raise HTTPException(409, f"label job {label_job} is {job['state']}; its features appear once it succeeds")
    if not m.get("browser"):
        raise HTTPException(
            404,
            f"label job {label_job} published no browser pages (it ran with browser=false, "
            "or before the browser existed); label the SAE again",
        )
    return m


@router.get("/v1/browser/labels/{label_job}/features")
def list_features(
    label_job: str,
    svc: Svc,
    who: Caller,
    q: Annotated[str | None, Query(max_length=200, description="words of a label, or a feature index")] = None,
    sort: Literal["feature", "density", "score", "max_activation"] = "density",
    order: Literal["asc", "desc"] = "desc",
    labelled: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    """A page of the label job's features, searched and sorted."""
    m = _browsable(svc, label_job, who)
    rows = _CACHE.get(svc.store, m["browser"]["summaries_key"])["features"]
    if labelled:
        rows = [r for r in rows if r["label"] is not None]
    if q and q.strip():
        query = q.strip().lower()
        if query.isdigit():
            rows = [r for r in rows if str(r["feature"]) == query]
        else:
            words = query.split()
            rows = [r for r in rows if any(all(w in lab["label"].lower() for w in words) for lab in r["labels"])]
    missing = float("-inf") if order == "desc" else float("inf")
    rows = sorted(rows, key=lambda r: missing if r[sort] is None else r[sort], reverse=order == "desc")
    return {
        "label_job": label_job,
        "sae": m["sae"],
        "total": len(rows),
        "offset": offset,
        "features": rows[offset : offset + limit],
        "judge_controls": m.get("judge_controls"),
        "density_bins": _finite(m.get("density_bins")),
    }


@router.get("/v1/browser/labels/{label_job}/features/{feature}")
def feature_page(label_job: str, feature: int, svc: Svc, who: Caller) -> dict:
    """Everything the feature page draws."""
    m = _browsable(svc, label_job, who)
    rows = _CACHE.get(svc.store, m["browser"]["summaries_key"])["features"]
    if not 0 <= feature < len(rows):
        raise HTTPException(404, f"feature {feature} is not in 0..{len(rows) - 1}")
    chunk = _CACHE.get(svc.store, keys.feature_pages(label_job, feature // m["browser"]["chunk"]))
    page = chunk["pages"][feature % m["browser"]["chunk"]]
    records = _LABELS.get(svc.store, m["labels_key"], _by_feature).get(feature, [])
    return {
        **rows[feature],
        **page,
        "records": records,
        "label_job": label_job,
        "sae": m["sae"],
        "train_job": m["sae"].get("job_id"),
        "judge_controls": m.get("judge_controls"),
        # The newest strength a steer job calibrated with these labels (None: not calibrated).
        "calibration": _finite(calibrated.for_label_job(svc, label_job, who).get(feature)),
    }


_LABELS = _Cache(16)


def _finite(value):
    """NaN (an undefined figure, or an interval there is none of) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _by_feature(data: bytes) -> dict[int, list[dict]]:
    """labels.jsonl -> feature -> its records (one per explainer)."""
    out: dict[int, list[dict]] = {}
    for line in data.decode().splitlines():
        if line:
            r = json.loads(line)
            out.setdefault(r["feature"], []).append(r)
    return out
