"""A label job that carries another label job's labels (spec.carry_from) through the API and a real
worker: an SAE and its permuted copy on the tiny Llama, the copy's records carry the first job's
labels from the permuted features at cosine 1, its manifest counts them, its feature page shows
the match; a carry from a job that is not a label job, or an SAE of another d_in, is refused."""

from __future__ import annotations

import pytest
import torch

from saeq.client.client import JobFailed
from saeq.ml.sae import SparseAutoencoder
from saeq.specs import LabelSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOK = "blocks.1.hook_resid_post"
D_SAE = 64


def _save(sae: SparseAutoencoder, path) -> str:
    sae.save(path)
    return str(path)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """(model dir, SAE dir, its permuted copy's dir, perm: the copy's feature j is the SAE's perm[j])."""
    root = tmp_path_factory.mktemp("carry")
    model_dir = save_tiny_llama(root / "model", n_layers=3, d_model=64)
    torch.manual_seed(0)
    sae = SparseAutoencoder(64, D_SAE, "relu")
    with torch.no_grad():  # random biases: features differ in how often they fire
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE))
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))
    copy = SparseAutoencoder(64, D_SAE, "relu")
    with torch.no_grad():
        copy.W_dec.copy_(sae.W_dec[perm])
        copy.W_enc.copy_(sae.W_enc[:, perm])
        copy.b_enc.copy_(sae.b_enc[perm])
        copy.b_dec.copy_(sae.b_dec)
    narrow = SparseAutoencoder(32, D_SAE, "relu")
    dirs = _save(sae, root / "sae"), _save(copy, root / "copy"), _save(narrow, root / "narrow")
    return model_dir, *dirs, perm.tolist()


def _spec(model_dir, sae_dir, **kw) -> LabelSpec:
    return LabelSpec.model_validate(
        {
            "sae": {"source": "path", "path": sae_dir},
            "model": {"name": str(model_dir)},
            "hook": HOOK,
            "corpus": {"name": "wiki-en", "max_docs": 200},
            "context_len": 32,
            "sinks": {"exclude": False},  # an imported SAE has no harvest's sink rule
            "index_tokens": 2048,
            "n_most_active": 6,
            "explainers": [{"backend": "metadata"}],
            "judge": None,
            "scorers": ["embedding"],
            "n_explain_examples": 4,
            "n_score_examples": 4,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def carried(client_module, saes):
    """(the first label job, the copy's label job that carries from it)."""
    client = client_module
    model_dir, sae_dir, copy_dir, _, _ = saes
    first = client.wait(client.submit(_spec(model_dir, sae_dir))["id"], timeout=300)
    spec = _spec(model_dir, copy_dir, carry_from={"label_job": first["id"]})
    return first, client.wait(client.submit(spec)["id"], timeout=300)


def test_a_permuted_copy_carries_every_label_from_its_permuted_feature(client_module, saes, carried):
    client, perm = client_module, saes[4]
    first, second = carried
    first_labels = {r["feature"]: r["label"] for r in client.labels(first["id"])}
    carry = client.manifest(second["id"])["carry"]
    assert carry["label_job"] == first["id"] and carry["method"] == "decoder+activations"
    pages = [client.http.get(f"/v1/browser/labels/{second['id']}/features/{f}").json() for f in range(D_SAE)]
    fired = [p["feature"] for p in pages if p["n_activations"] > 0]
    # a feature that never fired has no activations to confirm its match on: matched, not stable
    assert carry["n_matched"] == D_SAE and carry["n_stable"] == len(fired) > 6
    assert [p["feature"] for p in pages if p["other_sae"]["stable"]] == fired
    records = client.labels(second["id"])
    # the same features fire as often in both; a tie in firing rate may pick another sixth one
    partner_labelled = [r for r in records if perm[r["feature"]] in first_labels]
    assert carry["n_carried"] == len(first_labels) == 6 and carry["n_carried_to_labelled"] == len(partner_labelled) >= 4
    for r in records:
        if r not in partner_labelled:
            assert "carried_from" not in r
            continue
        c = r["carried_from"]
        assert c["feature"] == perm[r["feature"]] and c["label"] == first_labels[c["feature"]]
        assert c["decoder_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert c["activation_correlation"] == pytest.approx(1.0, abs=1e-4)
        assert r["explainer"] == "metadata" and r["label"]  # its own label stays, beside the carried one
    records = partner_labelled
    # the browser's page of a carried feature: the match, with the other job to link to
    feature = records[0]["feature"]
    page = client.http.get(f"/v1/browser/labels/{second['id']}/features/{feature}").json()
    other = page["other_sae"]
    assert (other["label_job"], other["feature"], other["stable"]) == (first["id"], int(perm[feature]), True)
    assert other["label"] == first_labels[int(perm[feature])]
    # a feature neither job labelled still shows its match, with no label to carry
    unlabelled = next(f for f in range(D_SAE) if int(perm[f]) not in first_labels)
    page = client.http.get(f"/v1/browser/labels/{second['id']}/features/{unlabelled}").json()
    assert page["other_sae"]["feature"] == int(perm[unlabelled]) and page["other_sae"]["label"] is None


def test_the_browser_shows_the_feature_in_the_other_sae_and_links_to_it(client_module, saes, carried, chromium):
    client, perm = client_module, saes[4]
    first, second = carried
    first_labels = {r["feature"]: r["label"] for r in client.labels(first["id"])}
    feature = next(r["feature"] for r in client.labels(second["id"]) if "carried_from" in r)
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{client.url}/browse#/feature/{second['id']}/{feature}")
    page.wait_for_selector("#signin")
    page.locator("[name=api_key]").fill(client.api_key)
    page.locator("#signin button").click()
    page.wait_for_selector("#other-sae")
    panel = page.locator("#other-sae").inner_text()
    assert f"feature {perm[feature]} of label job {first['id'][:8]}" in panel and "decoder cosine 1.000" in panel
    assert "activation correlation 1.000" in panel and "stable" in panel
    assert first_labels[perm[feature]] in panel and "carried from the other SAE, not scored here" in panel
    page.locator("#other-sae a").click()  # to the partner's page in the first job's browser
    page.wait_for_function(f"location.hash === '#/feature/{first['id']}/{perm[feature]}'")
    page.wait_for_selector(".label")
    assert first_labels[perm[feature]] in page.locator(".label").first.inner_text()
    assert not errors


def test_a_carry_from_no_label_job_or_an_sae_of_another_d_in_fails_naming_the_field(client_module, saes):
    client = client_module
    model_dir, sae_dir, _, narrow_dir, _ = saes
    first = client.wait(client.submit(_spec(model_dir, sae_dir, n_most_active=2))["id"], timeout=300)
    for sae, label_job, says in ((sae_dir, "0" * 32, "published no output"), (narrow_dir, first["id"], "d_in 32")):
        with pytest.raises(JobFailed) as e:
            client.wait(client.submit(_spec(model_dir, sae, carry_from={"label_job": label_job}))["id"], timeout=300)
        assert "(spec.carry_from.label_job)" in str(e.value) and says in str(e.value), str(e.value)
