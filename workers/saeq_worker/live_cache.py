"""What the live feature ops (`inspect`, `contrast`) keep loaded in a worker process: SAEs and
label jobs' labels, each dropped least recently used first. One cache for both ops, so a contrast
after an inspect of the same SAE loads nothing."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from saeq.errors import InvalidSpec
from saeq.platform.store import ObjectStore
from saeq.specs.contrast import ContrastRequest
from saeq.specs.inspect import InspectRequest
from saeq.specs.manifests import LabelManifest
from saeq_worker.resolve import SaeContext, read_published_manifest, sae_context

KEPT = 4
"""SAEs and label jobs a worker process keeps loaded (the least recently used dropped)."""

_SAES: OrderedDict[str, SaeContext] = OrderedDict()
_LABELS: OrderedDict[str, tuple[dict[int, str], bool]] = OrderedDict()  # label job -> (labels, has pages)

T = TypeVar("T")


def _kept(cache: OrderedDict[str, T], key: str, load: Callable[[], T]) -> T:
    if key not in cache:
        cache[key] = load()
        while len(cache) > KEPT:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def live_sae(request: InspectRequest | ContrastRequest, store: ObjectStore) -> SaeContext:
    """The SAE, model and hook the request names, loaded once."""
    # Keyed by what picks the SAE, model and hook only: other fields do not reload it.
    key = request.model_dump_json(include={"sae", "model", "hook"})
    return _kept(_SAES, key, lambda: sae_context(request, store))


def live_labels(store: ObjectStore, label_job: str, ctx: SaeContext) -> tuple[dict[int, str], bool]:
    """(feature -> its best-scored label, whether the job published feature pages), loaded once."""
    return _kept(_LABELS, label_job, lambda: _read_labels(store, label_job, ctx))


def _read_labels(store: ObjectStore, label_job: str, ctx: SaeContext) -> tuple[dict[int, str], bool]:
    """The label the feature list shows (saeq.ml.feature_pages.summaries: detection, embedding,
    then fuzzing AUC); refused when the label job labelled another SAE."""
    manifest = read_published_manifest(store, label_job, LabelManifest, field="label_job", id_field="label_job")
    which = ("source", "job_id", "name", "path")
    if any(manifest.sae.get(k) != ctx.provenance.get(k) for k in which):
        labelled = {k: manifest.sae[k] for k in which if k in manifest.sae}
        raise InvalidSpec(f"label job {label_job} labelled another SAE: {labelled}", field="label_job")
    best: dict[int, tuple[float, str]] = {}
    for line in store.get(manifest.labels_key).decode().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        scores = r.get("scores") or {}
        auc = next(
            (
                scores[k]["auc"]
                for k in ("detection", "embedding", "fuzzing")
                if (scores.get(k) or {}).get("auc") is not None
            ),
            -1.0,
        )
        if r["feature"] not in best or auc > best[r["feature"]][0]:
            best[r["feature"]] = (auc, r["label"])
    return {f: label for f, (_, label) in best.items()}, manifest.browser is not None
