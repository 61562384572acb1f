"""Features of any text through the real API and a real live worker: `POST /v1/features/inspect`
gives per token the SAE's own encode of the hook (computed here again, within 1e-5), sinks named
and left out, labels and feature pages of the SAE's label job; bad input is a 422 naming the
field; the browser's inspect page draws it in Chromium with the labels linked."""

from __future__ import annotations

import re

import httpx
import pytest
import torch
from click.testing import CliRunner

from saeq.client.cli import main
from saeq.client.client import ApiError
from saeq.jobs.steer import chat_prompt
from saeq.ml.features import read_hook
from saeq.ml.models import load_model
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import sink_mask
from saeq.specs import LabelSpec, ModelSpec
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration

SENTENCE = "The river crossing grew into a city of bridges, markets and schools."


@pytest.fixture(scope="module")
def label_job(client_module, train_job):
    spec = LabelSpec.model_validate(
        {
            "sae": {"job_id": train_job["id"]},
            "index_tokens": 4096,
            "n_most_active": 24,
            "explainers": [{"backend": "metadata"}],
            "judge": None,
            "scorers": ["embedding"],
            "n_explain_examples": 4,
            "n_score_examples": 4,
        }
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=300)


@pytest.fixture(scope="module")
def encoded(client_module, harvest_job, train_job, tmp_path_factory):
    """This test's own reading of SENTENCE: token ids, the SAE's activations (T, d_sae) at the hook,
    and the sink mask by the harvest's rule."""
    tmp = tmp_path_factory.mktemp("inspect-sae")
    client_module.download(train_job["id"], tmp, prefix="saes/topk/saelens/")
    sae = SparseAutoencoder.load(tmp / "saes" / "topk" / "saelens").eval()
    lm = load_model(ModelSpec(name=harvest_job["spec"]["model"]["name"]), cache_dir=str(tmp / "cache"))
    ids = lm.tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    rule = client_module.manifest(train_job["id"])["harvest"]["sinks"]
    with torch.inference_mode():
        x_TD = read_hook(lm, HOOK, torch.tensor([ids]))
        acts_TS = sae.encode(x_TD)
    sinks_T = sink_mask(torch.arange(len(ids)), x_TD.norm(dim=-1), rule["median_norm"], rule["norm_factor"])
    return ids, acts_TS, sinks_T


def test_inspect_gives_the_sae_encode_of_each_token_with_labels_and_pages(client_module, train_job, label_job, encoded):
    ids, acts_TS, sinks_T = encoded
    labels = {r["feature"]: r["label"] for r in client_module.labels(label_job["id"])}  # one explainer: one each
    chosen = [int(acts_TS[1:].sum(0).argmax()), 0]
    out = client_module.inspect(train_job["id"], SENTENCE, top_k=5, features=chosen)
    assert out["hook"] == HOOK and out["label_job"] == label_job["id"]  # the SAE's newest label job
    assert [t["token_id"] for t in out["tokens"]] == ids
    assert [t["sink"] is not None for t in out["tokens"]] == sinks_T.tolist() and out["tokens"][0][
        "sink"
    ] == "position0"
    assert out["n_sinks"] == int(sinks_T.sum())
    named = 0
    for t, tok in enumerate(out["tokens"]):
        if tok["sink"]:
            assert tok["top"] == [] and tok["activations"] is None
            continue
        vals, idx = acts_TS[t].topk(5)
        vals, idx = vals[vals > 0], idx[vals > 0]  # only features that fire are reported
        assert [f["feature"] for f in tok["top"]] == idx.tolist()
        assert [f["activation"] for f in tok["top"]] == pytest.approx(vals.tolist(), abs=1e-5)
        assert tok["activations"] == pytest.approx(acts_TS[t, chosen].tolist(), abs=1e-5)
        for f in tok["top"]:
            assert f["label"] == labels.get(f["feature"])
            assert f["link"] == f"/browse#/feature/{label_job['id']}/{f['feature']}"
            named += f["label"] is not None
    assert named > 0  # the 24 labelled features are the most active: some fire on the sentence


def test_a_chat_is_read_through_the_chat_template(client_module, harvest_job, train_job, tmp_path):
    messages = [{"role": "user", "content": "Where do rivers meet?"}]
    lm = load_model(ModelSpec(name=harvest_job["spec"]["model"]["name"]), cache_dir=str(tmp_path))
    out = client_module.inspect(train_job["id"], messages=messages, top_k=3)
    assert [t["token_id"] for t in out["tokens"]] == chat_prompt(lm, messages)
    assert all(len(t["top"]) <= 3 for t in out["tokens"]) and out["tokens"][0]["sink"] == "position0"


def test_the_cli_prints_a_line_a_token(stack, train_job, label_job, encoded):
    ids, acts_TS, sinks_T = encoded
    feature = int(acts_TS[1:].sum(0).argmax())
    args = ["--url", stack.url, "--api-key", stack.admin_key, "inspect", train_job["id"], SENTENCE, "-f", str(feature)]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert f"labels from {label_job['id']}" in lines[0] and f"f{feature}" in lines[1]
    assert "sink (position 0): left out" in lines[2]
    rows = lines[2 : 2 + len(ids)]
    assert [int(r.split()[0]) for r in rows] == list(range(len(ids)))
    peak = int(acts_TS[:, feature].masked_fill(sinks_T, -1).argmax())  # the feature's top token: its value printed
    assert f"{float(acts_TS[peak, feature]):.3f}" in rows[peak]
    assert lines[-1].startswith(f"{len(ids)} tokens, ")


def test_bad_input_is_a_422_naming_the_field(stack, client_module, train_job, harvest_job):
    sae = {"job_id": train_job["id"]}
    cases = [
        ({"sae": sae, "text": ""}, "text"),
        ({"sae": sae}, "text"),  # neither text nor messages
        ({"sae": {"job_id": "f" * 32}, "text": "Hi"}, "sae.job_id"),
        ({"sae": {"job_id": harvest_job["id"]}, "text": "Hi"}, "sae.job_id"),  # not a train job
        ({"sae": sae, "text": "Hi", "top_k": 0}, "top_k"),
        ({"sae": sae, "text": "Hi", "top_k": 65}, "top_k"),
        ({"sae": sae, "text": "Hi", "features": [256]}, "features.0"),  # the SAE has 256 latents: the worker says so
        ({"sae": sae, "text": "Hi", "label_job": "0" * 32}, "label_job"),
    ]
    with httpx.Client(base_url=stack.url, timeout=120, headers={"Authorization": f"Bearer {stack.admin_key}"}) as http:
        for body, field in cases:
            r = http.post("/v1/features/inspect", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["field"] == field, (body, r.json())
    with pytest.raises(ApiError) as e:
        client_module.inspect(train_job["id"], "Hi", top_k=100)
    assert e.value.status == 422 and "top_k" in str(e.value)


def test_the_inspect_page_shades_tokens_and_links_labels(
    client_module, train_job, label_job, encoded, chromium, tmp_path
):
    client = client_module
    _, acts_TS, _ = encoded
    feature = int(acts_TS[1:].sum(0).argmax())
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{client.url}/browse#/login?key={client.api_key}&next=/inspect")
    page.locator("#use-link-key", has_text="Sign in as team").click()
    page.wait_for_selector("#inspect")
    page.locator("[name=train]").fill(train_job["id"])
    page.locator("[name=text]").fill(SENTENCE)
    page.locator("[name=shade]").fill(str(feature))
    page.locator("#inspect").click()
    page.locator("#inspect-figures", has_text=re.compile(r"tokens")).wait_for(timeout=120_000)
    assert page.locator("#error").inner_text() == ""
    assert page.locator("#tokens .tok.sink").count() >= 1  # position 0
    shaded = page.locator("#tokens .tok[data-act]")
    assert shaded.count() > 0 and "rgba(249, 115, 22" in (shaded.first.get_attribute("style") or "")
    links = page.locator(f"#per-token a[href^='#/feature/{label_job['id']}/']")
    assert links.count() > 0
    labelled = page.locator("#per-token .feat", has=page.locator(".label")).first
    labels = {str(r["feature"]): r["label"] for r in client.labels(label_job["id"])}
    assert labelled.locator(".label").inner_text() == labels[labelled.locator("a").inner_text().lstrip("#")]
    page.screenshot(path=str(tmp_path / "inspect.png"), full_page=True)
    assert (tmp_path / "inspect.png").stat().st_size > 10_000
    opened = labelled.locator("a").inner_text().lstrip("#")
    labelled.locator("a").click()  # the label's link opens the feature's page
    page.wait_for_selector(f"h1 >> text=Feature {opened}")
    page.get_by_text("inspect a text").click()  # and back: that feature shades the text at once
    page.locator("#inspect-figures", has_text=re.compile(r"tokens")).wait_for(timeout=120_000)
    assert page.locator("[name=shade]").input_value() == opened and page.locator("#error").inner_text() == ""
    assert page.locator("#tokens .tok").count() == len(encoded[0])
    assert errors == []
