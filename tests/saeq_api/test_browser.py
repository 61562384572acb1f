"""The browser's JSON routes over a published label job of 16,384 features: pages of the list,
search, sort, a feature page, and the static page itself."""

from __future__ import annotations

import json

import pytest

from saeq import keys
from saeq.ml.feature_pages import CHUNK, PAGES_FORMAT
from saeq.platform.registry import Registry
from saeq.platform.settings import open_store

D_SAE = 16_384


def publish(settings, kind: str, spec: dict, write) -> str:
    """A job that ran and succeeded, as a worker leaves it: `write(job_id, store)` stores its
    artifacts and returns its manifest, written last."""
    registry, store = Registry.from_url(settings.redis_url), open_store(settings)
    job, _ = registry.create(kind=kind, spec=spec, queue="cpu", depends_on=[])
    claim = registry.claim(job["id"], job["dispatch_id"], "test")
    manifest = write(job["id"], store)
    store.put(keys.manifest(job["id"]), json.dumps({**manifest, "job_id": job["id"]}).encode())
    registry.finish(job["id"], claim.token, "succeeded", manifest_key=keys.manifest(job["id"]))
    return job["id"]


@pytest.fixture
def label_job(api, api_settings) -> str:
    rows = [
        {
            "feature": f,
            "density": (f % 97) / 1000,
            "max_activation": float(f % 13),
            "label": f"concept {f}" if f % 4 == 0 else None,
            "score": (f % 10) / 10 if f % 4 == 0 else None,
            "labels": [{"explainer": "metadata", "label": f"concept {f}", "auc": (f % 10) / 10}] if f % 4 == 0 else [],
        }
        for f in range(D_SAE)
    ]
    train = "0" * 31 + "1"
    sae = {"source": "job", "job_id": train, "name": "big"}
    page = {
        "feature": 5,
        "n_activations": 3,
        "histogram": [1, 2],
        "histogram_edges": [0, 1, 2],
        "top": [{"tokens": ["a", "b"], "acts": [0, 2.0], "doc_id": 1, "context": 0, "start": 0}],
        "quantiles": [],
        "logit_effects": {"positive": [["x", 1.0]], "negative": [["y", -1.0]]},
    }

    def write(job_id, store):
        store.put(keys.feature_summaries(job_id), json.dumps({"format": PAGES_FORMAT, "features": rows}).encode())
        store.put(
            keys.feature_pages(job_id, 0),
            json.dumps({"pages": [{**page, "feature": f} for f in range(CHUNK)]}).encode(),
        )
        store.put(
            keys.labels_file(job_id),
            (
                json.dumps(
                    {"feature": 4, "explainer": "metadata", "label": "concept 4", "description": "d", "scores": {}}
                )
                + "\n"
            ).encode(),
        )
        return {
            "kind": "label",
            "sae": sae,
            "n_features": D_SAE // 4,
            "labels_key": keys.labels_file(job_id),
            "browser": {"summaries_key": keys.feature_summaries(job_id), "chunk": CHUNK, "n_chunks": D_SAE // CHUNK},
        }

    return publish(api_settings, "label", {"kind": "label", "sae": sae}, write)


def test_the_list_pages_sorts_and_searches_16k_features(api, label_job):
    r = api.get(f"/v1/browser/labels/{label_job}/features", params={"limit": 50})
    body = r.json()
    assert r.status_code == 200 and body["total"] == D_SAE and len(body["features"]) == 50
    densities = [f["density"] for f in body["features"]]
    assert densities == sorted(densities, reverse=True)
    last = api.get(
        f"/v1/browser/labels/{label_job}/features",
        params={"sort": "feature", "order": "asc", "offset": D_SAE - 10, "limit": 50},
    ).json()
    assert [f["feature"] for f in last["features"]] == list(range(D_SAE - 10, D_SAE))
    found = api.get(f"/v1/browser/labels/{label_job}/features", params={"q": "concept 1200"}).json()
    # every word of the query inside one label
    assert {f["feature"] for f in found["features"]} == {1200, 11200, 12000, 12004, 12008}
    by_index = api.get(f"/v1/browser/labels/{label_job}/features", params={"q": "4097"}).json()
    assert [f["feature"] for f in by_index["features"]] == [4097]
    labelled = api.get(
        f"/v1/browser/labels/{label_job}/features", params={"labelled": True, "sort": "score", "limit": 5}
    ).json()
    assert labelled["total"] == D_SAE // 4 and all(f["score"] == 0.8 for f in labelled["features"])


def test_a_feature_page_and_its_errors(api, label_job):
    page = api.get(f"/v1/browser/labels/{label_job}/features/4").json()
    assert page["label"] == "concept 4" and page["top"][0]["acts"] == [0, 2.0]
    assert page["records"][0]["explainer"] == "metadata" and page["train_job"] == "0" * 31 + "1"
    assert api.get(f"/v1/browser/labels/{label_job}/features/{D_SAE}").status_code == 404
    assert api.get(f"/v1/browser/labels/{'f' * 32}/features").status_code == 404
    assert api.get(f"/v1/browser/labels/{label_job}/features", params={"limit": 10_000}).status_code == 422


def test_the_page_and_its_assets_are_served_and_nothing_else(api):
    page = api.get("/browse")
    assert page.status_code == 200 and "/browse/static/browser.js" in page.text
    assert (
        api.get("/browse/static/browser.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert api.get("/browse/static/..%2Fmain.py").status_code == 404
    assert api.get("/browse/static/nope.js").status_code == 404
