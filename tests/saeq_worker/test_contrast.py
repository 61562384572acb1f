"""Contrastive search through the real API and a real live worker: `POST /v1/features/contrast`
answers what the job function gives on the same texts with the SAE the train job published; a
builtin corpus's topics can be the sets (`saeq contrast --a-topic ... --b-topic ...`); bad input is a
422 naming the field."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from click.testing import CliRunner

from saeq.client.cli import main
from saeq.jobs.contrast import contrast_features, text_activations
from saeq.ml.models import load_model
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.specs import ActivationsRef, HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.saeq_worker.conftest import HOOK
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harvest_job(client_module, tmp_path_factory):
    """Smaller than the package's (these tests need an SAE, not a good one): 2 shards."""
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)), hooks=[HOOK], max_tokens=8192, context_len=64, batch_size=8
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


@pytest.fixture(scope="module")
def train_job(client_module, harvest_job):
    spec = TrainSpec(
        activations=ActivationsRef(job_id=harvest_job["id"], hook=HOOK),
        saes=[SaeConfig(name="topk", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=6144,
        validation_tokens=1024,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=300)


A = [
    "The river crossing grew into a city of bridges.",
    "A stone bridge spans the river near the old mill.",
    "Bridges over the strait carry trains and cars.",
    "The suspension bridge opened to traffic in 1937.",
    "Engineers inspected the bridge after the flood.",
    "The river was crossed by a wooden bridge.",
    "Each bridge in the city has a name.",
    "The new bridge links the island to the coast.",
]
B = [
    "Mozart wrote his first symphony as a child.",
    "The composer moved to Vienna in 1781.",
    "She was a painter, born in Paris in 1840.",
    "He served as president for two terms.",
    "The poet died at the age of thirty.",
    "Her novels were translated into many languages.",
    "The scientist won the prize in 1921.",
    "He was born in a small village in the north.",
]


def test_the_worker_answers_what_the_job_function_gives(client_module, harvest_job, train_job, tmp_path):
    out = client_module.contrast(train_job["id"], A, B, top_k=5, seed=3)
    assert out["hook"] == HOOK and out["n_texts"] == {"a": 8, "b": 8} and out["n_held_out"] == {"a": 4, "b": 4}
    client_module.download(train_job["id"], tmp_path, prefix="saes/topk/saelens/")
    sae = SparseAutoencoder.load(tmp_path / "saes" / "topk" / "saelens").eval()
    lm = load_model(ModelSpec(name=harvest_job["spec"]["model"]["name"]), cache_dir=str(tmp_path / "cache"))
    rule = client_module.manifest(train_job["id"])["harvest"]["sinks"]
    sinks = SinkReference(rule["median_norm"], rule["norm_factor"])
    acts = [
        text_activations(lm, sae, HOOK, lm.tokenizer(texts, add_special_tokens=False)["input_ids"],
                         sinks=sinks, aggregate="max", field=side)
        for side, texts in (("a", A), ("b", B))
    ]  # fmt: skip
    want_a, want_b = contrast_features(acts[0], acts[1], top_k=5, seed=3)
    for got, want in ((out["higher_on_a"], want_a), (out["higher_on_b"], want_b)):
        assert [f["feature"] for f in got] == [f.feature for f in want]
        for g, w in zip(got, want, strict=True):
            assert g["held_out_auroc"]["value"] == pytest.approx(w.held_out_auroc.value, abs=1e-6)
            assert g["held_out_auroc"]["low"] == pytest.approx(w.held_out_auroc.low, abs=1e-6)
            assert g["mean_a"] == pytest.approx(w.mean_a, abs=1e-5)
            assert g["held_out_auroc"]["n"] == 8 and g["label"] is None  # no label job for this SAE


def test_topics_of_the_builtin_corpus_through_the_cli(stack, train_job):
    args = ["--url", stack.url, "--api-key", stack.admin_key, "contrast", train_job["id"]]
    args += ["--a-topic", "Physical sciences", "--b-topic", "People", "--docs", "8", "--max-tokens", "32", "--top", "3"]
    out = CliRunner().invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["n_texts"] == {"a": 8, "b": 8} and answer["n_tokens"] <= 16 * 32
    assert answer["n_cut"] >= 1 and len(answer["higher_on_a"]) == 3 == len(answer["higher_on_b"])
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "8 vs 8 texts, 4 + 4 held out" in lines[0] and lines[1] == "higher on a:"
    first = answer["higher_on_a"][0]
    assert lines[3].split()[:2] == [str(first["feature"]), f"{first['selection_auroc']:.3f}"]


def test_bad_input_is_a_422_naming_the_field(stack, train_job):
    sae = {"job_id": train_job["id"]}
    a = {"texts": A}
    cases = [
        ({"sae": sae, "a": {"texts": A[:3]}, "b": a}, "a.texts"),  # fewer than 4
        ({"sae": sae, "a": a, "b": {"texts": [*B[:3], ""]}}, "b.texts.3"),
        ({"sae": sae, "a": {"texts": A, "topic": "People"}, "b": a}, "a.topic"),  # a topic needs a corpus
        ({"sae": sae, "a": a, "b": {"corpus": "wiki-en", "topic": "Dragons"}}, "b.topic"),  # the worker knows topics
        ({"sae": sae, "a": a, "b": a, "max_tokens": 600}, "max_tokens"),
        ({"sae": {"job_id": "f" * 32}, "a": a, "b": a}, "sae.job_id"),
    ]
    with httpx.Client(base_url=stack.url, timeout=120, headers={"Authorization": f"Bearer {stack.admin_key}"}) as http:
        for body, field in cases:
            r = http.post("/v1/features/contrast", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["field"] == field, (body, r.json())


def test_the_contrast_page_shows_both_directions_with_intervals(client_module, train_job, chromium, tmp_path):
    client = client_module
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{client.url}/browse#/login?key={client.api_key}&next=/contrast")
    page.locator("#use-link-key", has_text="Sign in as team").click()
    page.wait_for_selector("#contrast")
    page.locator("[name=train]").fill(train_job["id"])
    page.locator("[name=docs]").fill("8")  # set a: Physical sciences, set b: People, the page's defaults
    page.locator("[name=top_k]").fill("4")
    page.locator("#contrast").click()
    page.locator("#contrast-figures", has_text="held out").wait_for(timeout=120_000)
    assert page.locator("#error").inner_text() == ""
    assert page.locator("#contrast-figures").inner_text().startswith("8 vs 8 texts, 4 + 4 held out")
    for side in ("a", "b"):
        rows = page.locator(f"table[data-side={side}] tbody tr")
        assert rows.count() == 4
        assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", rows.first.locator("td.auroc").inner_text())
    page.screenshot(path=str(tmp_path / "contrast.png"), full_page=True)
    assert (tmp_path / "contrast.png").stat().st_size > 10_000
    assert errors == []
