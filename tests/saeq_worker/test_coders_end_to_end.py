"""Every sparse-coder family end to end through a real worker (issue 20): one harvest of a tiny Llama
captures an MLP's input and output and three layers' residual stream; a Matryoshka BatchTopK SAE, a
TopK skip-transcoder and a TopK crosscoder are trained on it, evaluated with the checks (spliced
where each reads and writes), labelled (their feature pages served by
the browser route, naming the hooks each coder reads and writes), inspected live (activations equal
to the coder's encode of its input) and steered live and by a batch steer job (add changes the completion;
ablating a feature that is silent on the whole text changes nothing; a crosscoder refuses ablate and
clamp, which would read its acausal activation, naming the field)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from saeq.client.client import JobFailed
from saeq.specs import EvaluateSpec, LabelSpec, ModelSpec, SaeConfig, SteerSpec, TrainSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

MLP_IN, MLP_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
LAYERS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
PROMPT = "The history of the city begins"
TEXT = "The river flows through the old town, past the church and the market square."

FAMILIES = {
    # name: (activations beyond the harvest id, the coder, what it reads, what it writes)
    "matryoshka": (
        {"hook": LAYERS[1]},
        SaeConfig(name="mat", architecture="matryoshka_batchtopk", d_sae=256, k=8, matryoshka_groups=[32, 224]),
        [LAYERS[1]],
        [LAYERS[1]],
    ),
    "transcoder": (
        {"hook": MLP_IN, "target_hook": MLP_OUT},
        SaeConfig(name="tc", architecture="topk_skip_transcoder", d_sae=256, k=8),
        [MLP_IN],
        [MLP_OUT],
    ),
    "crosscoder": (
        {"hooks": list(LAYERS)},
        SaeConfig(name="cc", architecture="topk_crosscoder", d_sae=256, k=8),
        list(LAYERS),
        list(LAYERS),
    ),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)


@pytest.fixture(scope="module")
def harvest(client_module, model_dir):
    from saeq.specs import HarvestSpec

    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[MLP_IN, MLP_OUT, *LAYERS],
        max_tokens=12_288,
        context_len=64,
        batch_size=8,
        shard_tokens=4096,
    )
    done = client_module.wait(client_module.submit(spec)["id"], timeout=300)
    assert done["state"] == "succeeded", done
    return done


@pytest.fixture(scope="module")
def lm(model_dir, tmp_path_factory):
    from saeq.ml.models import load_model

    return load_model(ModelSpec(name=str(model_dir)), cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=180, headers={"Authorization": f"Bearer {stack.admin_key}"}) as h:
        yield h


CHECKS = {
    "n_docs": 32,
    "context_len": 32,
    "specificity": None,
    "sensitivity": {"n_pairs": 8, "max_doc_share": 0.25},
    "probing": {"ks": [1, 5], "min_per_class": 4},
}


def _train_evaluate_and_label(client, harvest_id: str, family: str) -> tuple[dict, dict, dict, str]:
    activations, cfg, _, _ = FAMILIES[family]
    train = client.submit(
        TrainSpec(
            activations={"job_id": harvest_id, **activations},
            saes=[cfg],
            batch_size=512,
            total_tokens=15_360,
            validation_tokens=2048,
        )
    )
    evaluate = client.submit(
        EvaluateSpec.model_validate(
            {"sae": {"job_id": train["id"], "name": cfg.name}, "max_tokens": 512} | {"checks": CHECKS}
        ),
        depends_on=[train["id"]],
    )
    label = client.submit(
        LabelSpec(
            sae={"job_id": train["id"], "name": cfg.name},
            index_tokens=4096,
            n_most_active=4,
            explainers=[{"backend": "metadata"}],
            judge=None,
            scorers=["embedding"],
            n_explain_examples=4,
            n_score_examples=4,
        ),
        depends_on=[train["id"]],
    )
    done = client.wait(label["id"], timeout=300)
    assert done["state"] == "succeeded", (done, client.get(train["id"]))
    evaluated = client.wait(evaluate["id"], timeout=300)
    assert evaluated["state"] == "succeeded", evaluated
    return client.get(train["id"]), evaluated, done, cfg.name


def _local_coder(client, train_id: str, name: str, tmp_path):
    from saeq.ml.sae import SparseAutoencoder

    files = client.download(train_id, tmp_path, prefix=f"saes/{name}/saelens/")
    return SparseAutoencoder.load(files[0].parent).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_coder_is_labelled_browsed_inspected_and_steered(family, client_module, harvest, http, lm, tmp_path):
    from saeq.ml.features import read_hooks

    client = client_module
    _, _, reads, writes = FAMILIES[family]
    train, evaluated, label, name = _train_evaluate_and_label(client, harvest["id"], family)

    # evaluated with the checks: spliced where it reads and writes, the checks read its features
    evaluation = client.manifest(evaluated["id"])
    kind = {"matryoshka": "sae"}.get(family, family)
    assert evaluation["splice"] == {"kind": kind, "reads": reads, "replaces": writes}, evaluation["splice"]
    m = evaluation["metrics"]
    print(f"{family}: fvu {m['fvu']:.3f} KL {m['kl_div_with_sae']:.2e} (ablation {m['kl_div_with_ablation']:.2e})")
    assert 0 < m["fvu"] < 1 and 0 <= m["kl_div_with_sae"] < m["kl_div_with_ablation"], m
    checks = evaluation["checks"]
    assert checks["completeness"]["chemical elements"]["n_members"] == 96
    assert checks["probing"]["n_topics"] >= 1 and set(checks["probing"]["sae"]) == {"1", "5"}
    assert set(checks["sensitivity"]) == {"fr", "es"}
    manifest = client.manifest(label["id"])
    assert manifest["sae"]["reads"] == reads and manifest["sae"]["writes"] == writes, manifest["sae"]
    records = client.labels(label["id"])
    assert len(records) == 4 and all(r["label"] and "embedding" in r["scores"] for r in records), records
    top = max(records, key=lambda r: r["density"])["feature"]

    # the browser's feature page: the label, windows with activations, what the coder reads and writes
    r = http.get(f"/v1/browser/labels/{label['id']}/features/{top}")
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["feature"] == top and page["label"] == next(x["label"] for x in records if x["feature"] == top)
    assert page["reads"] == reads and page["writes"] == writes and page["logit_effects_from"] == writes[-1]
    assert page["top"] and max(max(w["acts"]) for w in page["top"]) > 0 and page["logit_effects"]["positive"]

    # live inspect: the activations are the coder's encode of its input (all its hooks, one pass)
    coder = _local_coder(client, train["id"], name, tmp_path)
    chosen = [x["feature"] for x in records]
    out = client.inspect(train["id"], TEXT, features=chosen, sae_name=name, top_k=4)
    ids = [t["token_id"] for t in out["tokens"]]
    with torch.no_grad():
        expected_TS = coder.encode(read_hooks(lm, reads, torch.tensor([ids])))
    ordinary = [t for t in out["tokens"] if t["sink"] is None]
    assert len(ordinary) >= len(ids) - 2, out["tokens"]
    for t in ordinary:
        row_S = expected_TS[t["position"]]
        torch.testing.assert_close(torch.tensor(t["activations"]), row_S[chosen], atol=1e-4, rtol=1e-4)
        values, features = row_S.topk(4)
        local_top = {int(f): float(v) for f, v in zip(features, values, strict=True) if v > 0}
        assert {x["feature"] for x in t["top"]} == set(local_top), (t["top"], local_top)
        assert all(x["activation"] == pytest.approx(local_top[x["feature"]], abs=1e-4) for x in t["top"])
    assert sum(len(t["top"]) for t in ordinary) >= len(ordinary)  # features do fire on the text

    # live contrast: each text's features read where the coder reads (a crosscoder: all its layers)
    from saeq.jobs.contrast import contrast_features, text_activations
    from saeq.ml.sinks import SinkReference

    rule = client.manifest(train["id"])["harvest"]["sinks"]
    sets = {
        "a": [TEXT, PROMPT, TEXT + " " + PROMPT, PROMPT + " " + TEXT],
        "b": ["A cat.", "Dogs bark.", "Blue sky.", "Rain."],
    }
    found = client.contrast(train["id"], sets["a"], sets["b"], top_k=3, sae_name=name, max_tokens=64, seed=3)
    acts = {
        side: text_activations(
            lm, coder, reads, lm.tokenizer(texts, add_special_tokens=False)["input_ids"],
            sinks=SinkReference(rule["median_norm"], rule["norm_factor"]), aggregate="max", field=side,
        )
        for side, texts in sets.items()
    }  # fmt: skip
    want_a, _ = contrast_features(acts["a"], acts["b"], top_k=3, seed=3)
    assert [f["feature"] for f in found["higher_on_a"]] == [f.feature for f in want_a], (found, want_a)
    for got, want in zip(found["higher_on_a"], want_a, strict=True):
        assert got["mean_a"] == pytest.approx(want.mean_a, abs=1e-4) and got["mean_b"] == pytest.approx(
            want.mean_b, abs=1e-4
        )

    # live steer: add changes the completion, written where the coder writes
    body = {"sae": {"job_id": train["id"], "name": name}, "prompt": PROMPT, "chat": False, "max_new_tokens": 8}
    r = http.post("/v1/steer", json=body | {"interventions": [{"feature": top, "mode": "add", "value": 400.0}]})
    assert r.status_code == 200, r.text
    added = r.json()
    assert added["sae"]["reads"] == reads and added["sae"]["writes"] == writes
    assert added["steered"] != added["default"] and added["kl_from_default"] > 0, added

    # ablate: a feature silent on the prompt and the whole default completion changes nothing
    prompt_ids = lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    r = http.post("/v1/steer", json=body | {"interventions": [{"feature": 0, "mode": "add", "value": 0.0}]})
    default_ids = r.json()["steered_token_ids"]
    with torch.no_grad():
        acts_TS = coder.encode(read_hooks(lm, reads, torch.tensor([prompt_ids + default_ids])))
    silent = int((acts_TS.abs().sum(0) == 0).nonzero()[0])
    r = http.post("/v1/steer", json=body | {"interventions": [{"feature": silent, "mode": "ablate"}]})
    if family == "crosscoder":  # acausal: its activation at layer 0 needs layers 1 and 2 of the same token
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "interventions[0].mode", r.text
    else:
        assert r.status_code == 200, r.text
        ablated = r.json()
        assert ablated["steered_token_ids"] == default_ids and ablated["steered"] == ablated["default"]
        assert ablated["kl_from_default"] == pytest.approx(0.0, abs=1e-6)

    # a batch steer job: the same edits, side by side with the default completion
    sets = [{"name": "add", "edits": [{"feature": top, "mode": "add", "value": 400.0}]}]
    sets += [] if family == "crosscoder" else [{"name": "ablate", "edits": [{"feature": silent, "mode": "ablate"}]}]
    steer = {"sae": body["sae"], "prompts": [PROMPT], "chat": False, "interventions": sets, "max_new_tokens": 8}
    done = client.wait(client.submit(SteerSpec.model_validate(steer))["id"], timeout=300)
    assert done["state"] == "succeeded", done
    assert client.manifest(done["id"])["sae"]["writes"] == writes
    rows = {r["set"]: r for r in map(json.loads, client.read(done["id"], "report/completions.jsonl").splitlines())}
    assert rows["add"]["steered"] != rows["add"]["default"] and rows["add"]["kl_from_default"] > 0, rows
    if family == "crosscoder":
        sets = [{"edits": [{"feature": top, "mode": "clamp", "value": 1.0}]}]
        clamp = client.submit(SteerSpec.model_validate(steer | {"interventions": sets}))
        with pytest.raises(JobFailed) as e:
            client.wait(clamp["id"], timeout=300)
        assert e.value.job["error"]["field"] == "spec.interventions[0].edits[0].mode", e.value.job
    else:
        assert rows["ablate"]["steered"] == rows["ablate"]["default"], rows
        assert rows["ablate"]["kl_from_default"] == pytest.approx(0.0, abs=1e-6)
