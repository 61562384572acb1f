"""Calibrated strengths (steer jobs with `calibrate`, docs/steer.md "Calibrated strength"): the live
routes fill in an edit that gives no value, and the feature browser shows them. The newest succeeded
calibration of a feature the caller sees wins; published manifests are only read."""

from __future__ import annotations

import json
from typing import Any

from saeq import keys
from saeq.platform.teams import Principal
from saeq.specs import Intervention
from saeq_api.deps import Services
from saeq_api.submit import unprocessable

CALIBRATED_MODES = ("add", "clamp", "cap")
"""Modes whose value a calibration chooses (ablate takes none; scale is a factor, not a strength)."""
SCAN_JOBS = 500
"""Newest succeeded steer jobs looked through for a calibration."""


def _calibrations(svc: Services, who: Principal, matches) -> dict[int, dict]:
    """feature -> the newest calibration entry (with its steer job's id) of the jobs `matches` takes."""
    found: dict[int, dict] = {}
    team = None if who.is_admin else who.team
    for job in svc.registry.list(kind="steer", state="succeeded", limit=SCAN_JOBS, team=team):  # newest first
        spec = job.get("spec") or {}
        if not spec.get("calibrate") or not matches(spec):
            continue
        manifest = json.loads(svc.store.get(keys.manifest(job["id"])))
        for entry in manifest.get("calibration") or []:
            found.setdefault(entry["feature"], entry | {"steer_job": job["id"]})
    return found


def for_label_job(svc: Services, label_job: str, who: Principal) -> dict[int, dict]:
    """The calibrations made with this label job's labels."""
    return _calibrations(svc, who, lambda spec: spec.get("label_job") == label_job)


def _same_sae(a: dict, b: dict) -> bool:
    """Two SaeRefs as JSON: a trained SAE by job and name (no name: the job's first), else equal."""
    if a.get("source", "job") == "job" and b.get("source", "job") == "job":
        return a.get("job_id") == b.get("job_id") and (a.get("name") or None) == (b.get("name") or None)
    return a == b


def fill_values(
    svc: Services, sae: Any, interventions: list[Intervention], who: Principal, prefix: str
) -> tuple[list[Intervention], list[dict]]:
    """Each add/clamp/cap edit that gives no `value` gets its feature's calibrated value, and the
    calibration's mode unless it names one; returns the edits and the calibrations used. An edit
    without a value and without a calibration is refused, naming its value field."""
    wanting = [
        i for i, e in enumerate(interventions) if "value" not in e.model_fields_set and e.mode in CALIBRATED_MODES
    ]
    if not wanting:
        return interventions, []
    ref = sae.model_dump(mode="json")
    found = _calibrations(svc, who, lambda spec: _same_sae(spec.get("sae") or {}, ref))
    out, used = list(interventions), []
    for i in wanting:
        e, field = interventions[i], f"{prefix}interventions.{i}.value"
        cal = found.get(e.feature)
        if cal is None:
            raise unprocessable(
                field,
                f"feature {e.feature} has no calibrated strength for this SAE (a steer job with calibrate "
                "makes one): give value",
            )
        if "mode" in e.model_fields_set and e.mode != cal["mode"]:
            raise unprocessable(
                field,
                f"feature {e.feature}'s calibrated strength is for mode {cal['mode']}, not {e.mode}: "
                f"give value, or mode {cal['mode']}",
            )
        out[i] = e.model_copy(update={"value": cal["value"], "mode": cal["mode"]})
        used.append({"intervention": i} | {k: cal[k] for k in ("feature", "mode", "value", "label", "steer_job")})
    return out, used
