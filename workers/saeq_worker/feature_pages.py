"""The feature browser's data, written by the label job after its labels: the list of every
feature (summaries) and the pages, in chunks of `CHUNK` features; each page names the hooks its
coder reads and writes."""

from __future__ import annotations

import json

import torch

from saeq import keys
from saeq.ml.feature_pages import (
    CHUNK,
    PAGES_FORMAT,
    effects_of,
    feature_page,
    logit_effects,
    n_chunks,
    summaries,
)
from saeq.ml.features import FeatureIndex
from saeq.ml.models import final_norm_gain
from saeq.specs import LabelSpec
from saeq_worker.running import RunningJob

N_TOP, N_BINS, PER_BIN, N_EFFECTS = 10, 5, 2, 10


def write_feature_pages(
    job: RunningJob,
    spec: LabelSpec,
    index: FeatureIndex,
    records: list[dict],
    sae,
    lm,
    decode,
    *,
    sites: dict,
    extra: dict[int, dict] | None = None,
) -> dict:
    """Store the list and the pages; -> what the manifest records of them. `sites`: the hooks the
    coder reads and writes (saeq_worker.label.coder_sites); `extra`: more of a feature's page (the
    carry's `other_sae`, saeq.jobs.label_carry)."""
    store = job.store
    rows = summaries(index, records)
    store.put(
        keys.feature_summaries(job.id),
        json.dumps({"format": PAGES_FORMAT, "features": rows}).encode(),
        content_type="application/json",
    )
    unembed = lm.model.get_output_embeddings().weight
    gain = final_norm_gain(lm.model)
    assert gain is None or isinstance(gain, torch.Tensor)  # a norm's weight: a Parameter
    effects = logit_effects(sae, unembed, gain, top=N_EFFECTS)
    # a crosscoder's logit effects are its last layer's block's: the one nearest the logits
    coder = {"reads": sites["reads"], "writes": sites["writes"], "logit_effects_from": (sites["writes"] or [None])[-1]}
    w = {"before": spec.window_before, "after": spec.window_after}
    for c in range(n_chunks(index.d_sae)):
        job.check()
        pages = []
        for f in range(c * CHUNK, min((c + 1) * CHUNK, index.d_sae)):
            g = torch.Generator().manual_seed(spec.seed * 1_000_003 + f)
            pages.append(
                coder
                | feature_page(
                    index,
                    f,
                    decode,
                    n_top=N_TOP,
                    n_bins=N_BINS,
                    per_bin=PER_BIN,
                    effects=effects_of(f, effects, decode),
                    generator=g,
                    **w,
                )
                | (extra or {}).get(f, {})
            )
        store.put(
            keys.feature_pages(job.id, c),
            json.dumps({"format": PAGES_FORMAT, "pages": pages}).encode(),
            content_type="application/json",
        )
        job.report(0.95 + 0.05 * (c + 1) / n_chunks(index.d_sae), "pages", f"{c + 1}/{n_chunks(index.d_sae)} chunks")
    return {
        "summaries_key": keys.feature_summaries(job.id),
        "chunk": CHUNK,
        "n_chunks": n_chunks(index.d_sae),
        "format": PAGES_FORMAT,
    }
