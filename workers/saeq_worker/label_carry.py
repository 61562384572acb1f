"""A label job's carry (spec.carry_from): the other label job's manifest, SAE, labels and feature
index read from the store, then saeq.jobs.label_carry's match and carried labels."""

from __future__ import annotations

import json

from saeq.errors import InvalidSpec
from saeq.jobs.label_carry import (
    best_labels,
    carried_labels,
    carry_summary,
    match_features,
    other_feature,
    with_carried,
)
from saeq.ml.features import FeatureIndex
from saeq.ml.sae import SparseAutoencoder
from saeq.platform.store import ObjectStore
from saeq.specs.label import CarryFrom
from saeq.specs.manifests import LabelManifest
from saeq_worker.resolve import load_trained_sae, read_published_manifest


def carry_source(store: ObjectStore, carry_from: CarryFrom, sae: SparseAutoencoder) -> tuple:
    """(the other label job's manifest, its SAE, records, feature index); errors name spec.carry_from.label_job: no such
    finished job, not a label job, or an SAE of another d_in or decoder shape."""
    field = "spec.carry_from.label_job"
    manifest = read_published_manifest(store, carry_from.label_job, LabelManifest, field="spec", id_field=field)
    prov = manifest.sae
    if prov.get("source") == "job":
        other, _, _ = load_trained_sae(store, prov["job_id"], prov.get("name"), field=field)
    else:
        other = SparseAutoencoder.load(prov["path"])
    if other.d_in != sae.d_in or other.W_dec.shape[1:] != sae.W_dec.shape[1:]:
        raise InvalidSpec(
            f"label job {carry_from.label_job} labelled an SAE of d_in {other.d_in} (decoder "
            f"{tuple(other.W_dec.shape)}); this one has d_in {sae.d_in} ({tuple(sae.W_dec.shape)}): "
            "their features cannot be matched",
            field=field,
        )
    records = [json.loads(line) for line in store.get(manifest.labels_key).decode().splitlines() if line]
    return manifest, other, records, FeatureIndex.from_bytes(store.get(manifest.index.key))


def carry(carry_from: CarryFrom, sae, index: FeatureIndex, records: list[dict], other: tuple):
    """-> (records with `carried_from`, the manifest's carry entry, feature -> its page's `other_sae`)."""
    manifest, other_sae, other_records, other_index = other
    m = match_features(
        sae.W_dec,
        other_sae.W_dec,
        index_a=index,
        index_b=other_index,
        min_cosine=carry_from.min_cosine,
        min_correlation=carry_from.min_correlation,
    )
    carried = carried_labels(m, other_records, label_job=carry_from.label_job)
    out = with_carried(records, carried)
    other_best = best_labels(other_records)
    pages = {
        f: other_feature(m, f, label_job=carry_from.label_job, other_best=other_best) for f in range(len(m.match_A))
    }
    summary = carry_summary(
        m,
        carried,
        records,
        label_job=carry_from.label_job,
        sae=manifest.sae,
        min_cosine=carry_from.min_cosine,
        min_correlation=carry_from.min_correlation,
    )
    return out, summary, {f: {"other_sae": p} for f, p in pages.items()}
