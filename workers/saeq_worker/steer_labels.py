"""The labels steering reads: a label job's best label per feature (a steer job's concepts),
label search over a label job's labels (the live search_labels op, embeddings kept per worker
process) and MiniLM, loaded once per process for both."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

from saeq.platform.store import ObjectStore
from saeq.specs import LabelSearch
from saeq.specs.manifests import LabelManifest
from saeq_worker.resolve import read_published_manifest


def _label_records(store: ObjectStore, label_job: str) -> dict[int, dict]:
    """feature -> its label record, preferring the label with the best detection AUC among explainers."""
    manifest = read_published_manifest(store, label_job, LabelManifest, field="spec", id_field="spec.label_job")
    best: dict[int, tuple[float, dict]] = {}
    for line in store.get(manifest.labels_key).decode().splitlines():
        r = json.loads(line)
        auc = (r["scores"].get("detection") or r["scores"].get("embedding") or {}).get("auc") or 0.0
        if r["feature"] not in best or auc > best[r["feature"]][0]:
            best[r["feature"]] = (auc, r)
    return {f: r for f, (_, r) in best.items()}


_EMBEDDED: OrderedDict[str, tuple] = OrderedDict()  # label job -> (records, embeddings, manifest, n labels)
EMBEDDED_JOBS = 4
"""Label jobs whose label embeddings a worker process keeps (least recently searched dropped)."""
MAX_SEARCH_LABELS = 50_000
"""Labels of one label job that label search embeds (the first ones; the reply says how many of
how many). MiniLM's 384 float32s are 1.5 KB a label: 75 MB at the cap, 4x that for EMBEDDED_JOBS.
A label job of a 32,768-feature SAE with one explainer fits whole."""
EMBED_BATCH = 256
"""Labels embedded between two cancel checks."""


def search_labels(
    search: LabelSearch, store: ObjectStore, *, device: str, check: Callable[[], None] | None = None
) -> dict:
    """Features of a label job ranked by cosine similarity of their label and description to the
    query (MiniLM); each feature once, with its best-matching label. `check` runs before each
    load and between batches of labels embedded, and raises to stop (the caller gave up)."""
    check = check or (lambda: None)
    check()
    embedder = _embedder(device)
    if search.label_job not in _EMBEDDED:
        _EMBEDDED[search.label_job] = _embed_labels(store, search.label_job, embedder, check)
        while len(_EMBEDDED) > EMBEDDED_JOBS:
            _EMBEDDED.popitem(last=False)
    _EMBEDDED.move_to_end(search.label_job)
    records, emb, manifest, n_labels = _EMBEDDED[search.label_job]
    q = embedder.model.encode(
        [search.query], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )[0]
    sims = (emb @ q).tolist()
    best: dict[int, tuple[float, dict]] = {}
    for r, sim in zip(records, sims, strict=False):
        if r["feature"] not in best or sim > best[r["feature"]][0]:
            best[r["feature"]] = (sim, r)
    ranked = sorted(best.values(), key=lambda t: -t[0])[: search.top]
    return {
        "label_job": search.label_job,
        "query": search.query,
        "sae": manifest.sae,
        "hook": manifest.hook,
        "results": [
            {
                "feature": r["feature"],
                "similarity": sim,
                "label": r["label"],
                "description": r["description"],
                "explainer": r["explainer"],
                "detection_auc": (r["scores"].get("detection") or {}).get("auc"),
                # its 95% interval over the scored windows (records from before intervals: none)
                "detection_auc_ci": ((r["scores"].get("detection") or {}).get("intervals") or {}).get("auc"),
            }
            for sim, r in ranked
        ],
        "labels_searched": len(records),
        "labels_total": n_labels,
    }


def _embed_labels(store: ObjectStore, label_job: str, embedder, check: Callable[[], None]) -> tuple:
    import torch

    manifest = read_published_manifest(store, label_job, LabelManifest, field="label_job")
    check()
    lines = store.get(manifest.labels_key).decode().splitlines()
    records = [json.loads(line) for line in lines[:MAX_SEARCH_LABELS]]
    texts = [f"{r['label']}: {r['description']}" for r in records]
    parts = []
    for i in range(0, len(texts), EMBED_BATCH):
        check()
        parts.append(
            embedder.model.encode(
                texts[i : i + EMBED_BATCH], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            )
        )
    model = embedder.model
    emb = torch.cat(parts) if parts else torch.zeros(0, model.get_sentence_embedding_dimension(), device=model.device)
    return records, emb, manifest, len(lines)


@lru_cache(maxsize=1)
def _embedder(device: str):
    """MiniLM, loaded once per worker process (label search and steer jobs use it)."""
    from saeq.ml.scoring import EmbeddingScorer

    return EmbeddingScorer(device=device)
