"""Label jobs through the API and a real worker: harvest -> train -> label, labels.jsonl and the
feature index in the store; an OpenAI-compatible endpoint as explainer and judge, failing or not,
named in specs and allowed by the deployment's SAEQ_LLM_ENDPOINTS; the same endpoint as a steer
job's judge (the steering score's three ratings)."""

from __future__ import annotations

import json

import pytest

from saeq import keys
from saeq.client.client import ApiError
from saeq.specs import LabelSpec, SteerSpec
from tests.fixtures_stack import make_stack
from tests.openai_server import OpenAIServer
from tests.saeq_worker.conftest import submit_metadata_labels

pytestmark = pytest.mark.integration


def _answer(request: dict) -> str:
    user = request["messages"][-1]["content"]
    if user.startswith("Rate how"):  # a steer job's judge: instruction 1, concept and fluency 2
        return "1" if "answers the instruction" in user else "2"
    if user.startswith("Excerpts:"):
        return "Label: tiny pattern\nDescription: Whatever the tiny model's feature marks."
    return "Yes" if "Text:" in user else "No"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    """The module's API and worker, whose deployment allows two LLM endpoints: `tiny` answers
    sensibly, `broken` always fails."""
    with (
        OpenAIServer(_answer) as tiny,
        OpenAIServer(lambda req: (500, {"error": {"message": "GPU fell off the bus"}})) as broken,
    ):
        endpoints = {"tiny": {"base_url": tiny.base_url}, "broken": {"base_url": broken.base_url}}
        with make_stack(
            tmp_path_factory.mktemp("stack"), redis_srv, s3_srv, SAEQ_LLM_ENDPOINTS=json.dumps(endpoints)
        ) as st:
            yield st


def test_train_then_label_with_local_metadata_and_endpoint(client_module, harvest_job, train_job, tmp_path):
    client = client_module
    spec = LabelSpec(
        sae={"job_id": train_job["id"], "name": "topk"},
        index_tokens=4096,
        n_most_active=6,
        explainers=[
            {"backend": "local", "model": harvest_job["spec"]["model"], "max_new_tokens": 6},
            {"backend": "metadata"},
            {"backend": "openai", "endpoint": "tiny", "model": "judge-model"},
        ],
        judge={"backend": "openai", "endpoint": "tiny", "model": "judge-model"},
        n_explain_examples=4,
        n_score_examples=4,
    )
    done = client.wait(client.submit(spec)["id"], timeout=300)
    manifest = client.manifest(done["id"])
    assert manifest["n_features"] == 6 and manifest["index"]["n_sinks"] > 0
    files = client.download(done["id"], tmp_path, prefix="labels/")
    assert [f.name for f in files] == ["labels.jsonl"]
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == 6 * 3
    assert {r["explainer"] for r in records} == {
        f"local:{harvest_job['spec']['model']['name']}",
        "metadata",
        "openai:judge-model",
    }
    for r in records:
        assert r["label"] and r["description"] and r["judge"] == "openai:judge-model"
        assert set(r["scores"]) == {"detection", "fuzzing", "embedding"}
        assert r["scores"]["detection"]["balanced_accuracy"] == 0.5  # a judge that always says yes
        # each score with its 95% interval over the 4 + 4 windows: recalls of 4/4 and 0/4 are not
        # certain, so neither is their mean (Jeffreys posteriors, not a redraw that never moves)
        bal = r["scores"]["detection"]["intervals"]["balanced_accuracy"]
        assert bal["method"] == "jeffreys" and bal["n"] == 8 and bal["low"] < 0.45 and bal["high"] > 0.55
        auc, ci = r["scores"]["embedding"]["auc"], r["scores"]["embedding"]["intervals"]["auc"]
        assert ci["low"] <= auc <= ci["high"] and ci["n"] == 8 and ci["unit"] == "windows"
    assert {r["label"] for r in records if r["explainer"] == "openai:judge-model"} == {"tiny pattern"}
    # A judge that says yes to everything fails its control trials: flagged, its scores not averaged in.
    controls = {c["scorer"]: c for c in manifest["judge_controls"]}
    assert set(controls) == {"detection", "fuzzing", "embedding"}
    for scorer in ("detection", "fuzzing"):
        c = controls[scorer]
        assert c["judge"] == "openai:judge-model" and not c["calibrated"] and c["accuracy"]["value"] == 0.5
        assert c["flag"].startswith("judge uncalibrated: scores uninformative") and c["accuracy"]["n"] > 0
    flagged = {k for k, c in controls.items() if not c["calibrated"]}
    for s in manifest["summary"].values():
        assert set(s["excluded"]) == flagged and set(s["scores"]) == {"detection", "fuzzing", "embedding"} - flagged
        assert s["excluded"]["detection"]["flag"] == controls["detection"]["flag"]
        # every mean, counted or excluded, with its interval over the explainer's 6 features
        for scorer, ms in [*s["scores"].items(), *s["excluded"].items()]:
            for metric in set(ms) - {"flag"}:
                ci = s["intervals"][scorer][metric]
                assert ci["n"] == 6 and ci["unit"] == "features" and ci["low"] <= ms[metric] <= ci["high"]
    # Scores per decade of density: every labelled feature in its bin, a flagged judge's means marked.
    bins = manifest["density_bins"]
    assert [b["low"] for b in bins] == [1e-4, 1e-3, 1e-2, 0.1] and sum(b["n_labelled"] for b in bins) == 6
    for b in bins:
        assert b["n_eligible"] >= b["n_labelled"]
        in_bin = {r["feature"] for r in records if b["low"] <= r["density"] < b["high"]}
        assert b["n_labelled"] == len(in_bin)
        for sc in b["scores"]:
            assert sc["auc"]["n"] == b["n_labelled"] and sc["flag"] == controls[sc["scorer"]]["flag"]
        assert len(b["scores"]) == (3 * 3 if in_bin else 0)  # explainers x scorers
    assert controls["embedding"]["judge"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert controls["embedding"]["by_kind"]["planted"]["n"] > 0
    arts = {a["key"] for a in client.artifacts(done["id"])["artifacts"]}
    assert keys.feature_index(done["id"]) in arts

    # Finding features to steer: label search by meaning, each feature once, best first.
    hits = client.search_labels(done["id"], "a tiny pattern", top=3)
    assert len(hits) == 3 and len({h["feature"] for h in hits}) == 3
    assert hits[0]["label"] == "tiny pattern" and hits[0]["similarity"] > 0.5
    assert hits[0]["similarity"] >= hits[1]["similarity"] >= hits[2]["similarity"]
    with pytest.raises(ApiError) as e:
        client.search_labels(train_job["id"], "x")
    assert e.value.status == 422 and "not a label job" in str(e.value)


def test_features_drawn_across_density_bins(client_module, train_job):
    """`select: density_bins` through the worker: the features labelled are the draw the index
    gives, at most per_bin of each bin and each inside its bin; scores reported per bin."""
    edges = [1e-3, 1e-2, 0.1, 1.0]
    spec = LabelSpec.model_validate(
        {
            "sae": {"job_id": train_job["id"]},
            "index_tokens": 2048,
            "select": {"edges": edges, "per_bin": 2, "seed": 3},
            "explainers": [{"backend": "metadata"}],
            "judge": None,
            "scorers": ["embedding"],
            "n_explain_examples": 2,
            "n_score_examples": 2,
            "browser": False,
        }
    )
    done = client_module.wait(client_module.submit(spec)["id"], timeout=300)
    manifest = client_module.manifest(done["id"])
    assert manifest["spec"]["select"] == {"by": "density_bins", "edges": edges, "per_bin": 2, "seed": 3}
    records = client_module.labels(done["id"])
    bins = manifest["density_bins"]
    assert [(b["low"], b["high"]) for b in bins] == list(zip(edges, edges[1:], strict=False))
    assert manifest["n_features"] == len(records) == sum(b["n_labelled"] for b in bins) >= 2
    for b in bins:
        in_bin = [r for r in records if b["low"] <= r["density"] < b["high"] or r["density"] == b["high"] == 1.0]
        assert b["n_labelled"] == len(in_bin) == min(2, b["n_eligible"])
        if in_bin:
            (sc,) = b["scores"]
            mean = sum(r["scores"]["embedding"]["auc"] for r in in_bin) / len(in_bin)
            assert sc["scorer"] == "embedding" and sc["auc"]["value"] == pytest.approx(mean)
            assert sc["flag"] is None or sc["flag"].startswith("judge uncalibrated")


def test_a_failing_endpoint_fails_the_job_with_the_reason(client_module, train_job):
    spec = LabelSpec(
        sae={"job_id": train_job["id"]},
        index_tokens=2048,
        n_most_active=2,
        explainers=[{"backend": "openai", "endpoint": "broken", "model": "m", "max_retries": 0}],
        judge=None,
        scorers=["embedding"],
        n_explain_examples=2,
        n_score_examples=2,
    )
    failed = client_module.wait(client_module.submit(spec)["id"], timeout=300, raise_on_failure=False)
    assert failed["state"] == "failed" and failed["error"]["code"] == "endpoint_error"
    assert "GPU fell off the bus" in failed["error"]["message"] and "500" in failed["error"]["message"]
    assert not client_module.artifacts(failed["id"])["artifacts"] or keys.manifest(failed["id"]) not in {
        a["key"] for a in client_module.artifacts(failed["id"])["artifacts"]
    }


def test_bad_label_specs_are_refused_at_submit(client_module, harvest_job):
    with pytest.raises(ApiError) as e:
        client_module.submit(LabelSpec(sae={"job_id": harvest_job["id"]}))
    assert e.value.status == 422 and "is a harvest job, not a train job" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.submit({"kind": "label", "sae": {"job_id": "0" * 32}, "explainers": [{"backend": "gpt"}]})
    assert e.value.status == 422 and "spec.explainers" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.submit({"kind": "label", "sae": {"job_id": "0" * 32}, "judge": None})
    assert e.value.status == 422 and "need a judge" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.submit({"kind": "label", "sae": {"job_id": "0" * 32}, "select": {"edges": [0.1, 0.01]}})
    assert e.value.status == 422 and [d["field"] for d in e.value.detail] == ["spec.select.edges"]
    assert "increase strictly" in str(e.value)


def test_only_the_deployments_endpoints_can_be_named(client_module):
    """A spec names an endpoint; where it lives and its key are the deployment's, never the spec's."""
    explainers = [{"backend": "metadata"}, {"backend": "openai", "endpoint": "elsewhere", "model": "m"}]
    with pytest.raises(ApiError) as e:
        client_module.submit({"kind": "label", "sae": {"job_id": "0" * 32}, "explainers": explainers})
    assert e.value.status == 422
    assert [d["field"] for d in e.value.detail] == ["spec.explainers.1.endpoint"]
    assert "'elsewhere'" in str(e.value) and "allowed: broken, tiny" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.submit(
            {
                "kind": "label",
                "sae": {"job_id": "0" * 32},
                "explainers": [
                    {"backend": "openai", "endpoint": "tiny", "model": "m", "base_url": "http://attacker.example/v1"}
                ],
            }
        )
    assert e.value.status == 422 and [d["field"] for d in e.value.detail] == ["spec.explainers.0.base_url"]


def test_a_steer_job_rated_by_an_endpoint_judge(client_module, train_job):
    """The deployment's endpoint as a steer job's judge: every completion, default and steered, gets
    the three ratings the endpoint answered (the first logprob's digit) and their harmonic mean,
    and each (set, strength) its steering score over the prompts; an endpoint the deployment does
    not allow is refused at submit, naming spec.judge.endpoint."""
    label = submit_metadata_labels(client_module, train_job["id"], [3])
    spec = SteerSpec(
        sae={"job_id": train_job["id"]},
        label_job=label["id"],
        prompts=["The capital of France", "Cats are"],
        chat=False,
        interventions=[{"name": "f3", "edits": [{"feature": 3, "mode": "add", "value": 40.0}]}],
        max_new_tokens=6,
        judge={"backend": "openai", "endpoint": "tiny", "model": "judge-model"},
    )
    done = client_module.wait(client_module.submit(spec, depends_on=[label["id"]])["id"], timeout=300)
    rows = [json.loads(line) for line in client_module.read(done["id"], "report/completions.jsonl").splitlines()]
    assert len(rows) == 2
    for r in rows:
        for side in ("default", "steered"):
            ratings = [r[f"judge_{a}_{side}"] for a in ("concept", "instruction", "fluency")]
            assert ratings == [2.0, 1.0, 2.0]
            assert r[f"judge_score_{side}"] == pytest.approx(1.5)  # hmean(2, 1, 2)
    (group,) = client_module.manifest(done["id"])["summary"]
    assert group["steering_score_steered"]["value"] == pytest.approx(1.5) and group["steering_score_steered"]["n"] == 2
    with pytest.raises(ApiError) as e:
        elsewhere = {"backend": "openai", "endpoint": "elsewhere", "model": "m"}
        client_module.submit(spec.model_dump(mode="json") | {"judge": elsewhere})
    assert e.value.status == 422 and [d["field"] for d in e.value.detail] == ["spec.judge.endpoint"]
