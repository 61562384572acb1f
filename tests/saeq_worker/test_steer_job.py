"""Steering through the API and a real worker: a batch steer job, live `POST /v1/steer`, and the
OpenAI-compatible chat endpoint driven by the official `openai` client; conditional steering with a
planted trigger (a feature that fires on one token only) in all three, on this module's stack."""

from __future__ import annotations

import json

import httpx
import pytest

from saeq.client.client import ApiError
from saeq.specs import SteerSpec
from tests.planted_trigger import HOOK as PLANTED_HOOK
from tests.planted_trigger import STEER, WATCH, planted_trigger_sae
from tests.saeq_worker.conftest import HOOK, submit_metadata_labels
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


def test_batch_steer_job_writes_default_and_steered_side_by_side(client_module, harvest_job, train_job, tmp_path):
    # Labels (metadata only: cheap) name the features and give the concept to look for.
    label = submit_metadata_labels(client_module, train_job["id"], [3])
    spec = SteerSpec(
        sae={"job_id": train_job["id"]},
        label_job=label["id"],
        prompts=["The capital of France", "Cats are"],
        chat=False,
        interventions=[
            {"name": "f3", "edits": [{"feature": 3, "mode": "add", "value": 40.0}]},
            {"name": "scale1", "edits": [{"feature": 3, "mode": "scale", "value": 1.0}]},
        ],
        strengths=[0.0, 1.0],
        max_new_tokens=8,
        # The tiny model as the judge: a judge that cannot judge, but the score's arithmetic is checked.
        judge={"backend": "local", "model": harvest_job["spec"]["model"]},
    )
    done = client_module.wait(client_module.submit(spec, depends_on=[label["id"]])["id"], timeout=300)
    manifest = client_module.manifest(done["id"])
    concept = client_module.labels(label["id"])[0]["label"]
    assert manifest["n_completions"] == 2 * 2 * 2
    rows = [json.loads(line) for line in client_module.read(done["id"], "report/completions.jsonl").splitlines()]
    for r in rows:
        assert r["default"] and "steered" in r
        assert r["concept"] == concept and -1 <= r["concept_similarity_steered"] <= 1
        # Adding 0 x the direction, or scaling the activation by 1, changes nothing: same text, KL 0.
        if (r["set"], r["strength"]) in (("f3", 0.0), ("scale1", 1.0)):
            assert r["steered"] == r["default"] and r["kl_from_default"] == pytest.approx(0, abs=1e-6)
    summary = {(g["set"], g["strength"]): g for g in manifest["summary"]}
    assert summary[("scale1", 1.0)]["concept_rate"] == 0.0  # identical text is never "more" about it
    assert summary[("f3", 0.0)]["kl_from_default"] == pytest.approx(0, abs=1e-6)
    strong = [r for r in rows if r["set"] == "f3" and r["strength"] == 1.0]
    assert all(r["kl_from_default"] > 0 for r in strong)
    assert all(
        r["intervals"]["kl_from_default"]["low"] <= r["kl_from_default"] <= r["intervals"]["kl_from_default"]["high"]
        for r in strong
    )
    # The steering score (AxBench: harmonic mean of three 0-2 ratings), per row and per group over the prompts.
    for r in rows:
        ratings = [r[f"judge_{a}_steered"] for a in ("concept", "instruction", "fluency")]
        assert all(0 <= v <= 2 for v in ratings)
        assert r["judge_score_steered"] == pytest.approx(3 / sum(1 / v for v in ratings), rel=1e-6)
    for (name, strength), group in summary.items():
        est = group["steering_score_steered"]
        scores = [r["judge_score_steered"] for r in rows if (r["set"], r["strength"]) == (name, strength)]
        assert est["n"] == 2 and est["unit"] == "prompts" and est["value"] == pytest.approx(sum(scores) / 2)
        assert est["low"] <= est["value"] <= est["high"]
    # A completion left as it was is rated as it was: same text, same score.
    unchanged = [r for r in rows if r["steered"] == r["default"]]
    assert unchanged and all(r["judge_score_steered"] == pytest.approx(r["judge_score_default"]) for r in unchanged)


def test_live_steer_and_its_errors_name_the_field(stack, client_module, train_job):
    with httpx.Client(base_url=stack.url, timeout=120, headers={"Authorization": f"Bearer {stack.admin_key}"}) as http:
        body = {
            "sae": {"job_id": train_job["id"]},
            "prompt": "Hello",
            "chat": False,
            "max_new_tokens": 6,
            "interventions": [{"feature": 5, "mode": "add", "value": 30.0}],
        }
        r = http.post("/v1/steer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["default"] != out["steered"] or out["kl_from_default"] > 0
        for figure in ("kl_from_default", "perplexity_unsteered"):  # intervals over the generated tokens
            est = out["intervals"][figure]
            assert est["low"] <= out[figure] <= est["high"] and est["unit"] == "generated tokens", est
        assert out["hook"] == HOOK and out["sae"]["job_id"] == train_job["id"]

        bad_feature = {**body, "interventions": [{"feature": 256, "value": 1.0}]}
        r = http.post("/v1/steer", json=bad_feature)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "interventions.0.feature"
        unknown = {**body, "sae": {"job_id": "f" * 32}}
        r = http.post("/v1/steer", json=unknown)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "sae.job_id"
        scrape = http.get("/metrics").text  # live latency is on the API's dashboard
        assert 'saeq_api_live_request_seconds_count{op="steer",outcome="ok"}' in scrape


def test_openai_client_gets_a_steered_chat_completion(stack, harvest_job, train_job):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.admin_key, timeout=120, max_retries=0)
    model = harvest_job["spec"]["model"]["name"]
    plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert plain.choices[0].message.role == "assistant" and plain.usage.completion_tokens <= 5
    steering = {"sae": {"job_id": train_job["id"]}, "interventions": [{"feature": 7, "mode": "add", "value": 40.0}]}
    steered = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body={"steering": steering}
    )
    assert isinstance(steered.choices[0].message.content, str)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            extra_body={"steering": {**steering, "interventions": [{"feature": 999}]}},
        )
    assert "steering.interventions.0.feature: feature 999 is not in 0..255" in str(e.value)  # OpenAI error shape
    assert e.value.body["param"] == "steering.interventions.0.feature"


def test_steer_specs_refer_to_train_jobs(client_module, harvest_job):
    with pytest.raises(ApiError) as e:
        client_module.submit(
            SteerSpec(sae={"job_id": harvest_job["id"]}, prompts=["x"], interventions=[{"edits": [{"feature": 1}]}])
        )
    assert e.value.status == 422 and "not a train job" in str(e.value)


def test_openai_client_lists_models_chats_with_saeq_and_streams(stack, harvest_job, train_job):
    """A new user's path: models.list() says what to pass; `saeq` with a steering SAE runs the SAE's
    own model; stream=True is read by the official client; an unknown model names the field."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.admin_key, timeout=120, max_retries=0)
    assert "saeq" in [m.id for m in client.models.list()]
    steering = {"sae": {"job_id": train_job["id"]}, "interventions": [{"feature": 7, "mode": "add", "value": 40.0}]}
    ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "extra_body": {"steering": steering}}
    whole = client.chat.completions.create(model="saeq", **ask)
    assert whole.model == harvest_job["spec"]["model"]["name"]  # the SAE's model, not a hub lookup of "saeq"
    chunks = list(
        client.chat.completions.create(model="saeq", stream=True, stream_options={"include_usage": True}, **ask)
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="no-such-org/no-such-model", messages=ask["messages"], max_tokens=2)
    assert e.value.body["param"] == "model" and "/v1/models" in e.value.body["message"]


# --- conditional steering (issue 21, acceptance 3): a planted trigger, live, chat and a batch job ---

PLAIN = ["The history of the city", "Cats are small animals"]
CANDIDATES = ["A bridge over water", "Paris is a large port", "Music of the mountain"]
"""The prompt holding the trigger: the first whose last token no PLAIN prompt or default completion
has (last, so the edit there moves the next token's prediction directly, on a random tiny model)."""
PLANTED_NEW = 8


@pytest.fixture(scope="module")
def planted(stack, tmp_path_factory):
    """(http client, model dir, SAE dir, the prompt holding the trigger token, PLAIN's default ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_tiny_llama(tmp_path_factory.mktemp("cond-llama"), n_layers=2, d_model=64)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # A chat is its messages' text alone: a chat's last token is its message's, as in the prompts.
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(model_dir)
    http = httpx.Client(base_url=stack.url, timeout=120, headers={"Authorization": f"Bearer {stack.admin_key}"})
    defaults = []
    for prompt in PLAIN:  # the first request waits for the worker to import torch and load the model
        r = http.post("/v1/steer", json=_planted_body(model_dir, prompt))
        assert r.status_code == 200, r.text
        defaults.append(r.json()["steered_token_ids"])
    seen = {i for text in PLAIN for i in tok(text, add_special_tokens=False)["input_ids"]}
    seen |= {i for ids in defaults for i in ids}
    with_token, token = next(
        (text, ids[-1])
        for text in CANDIDATES
        if (ids := tok(text, add_special_tokens=False)["input_ids"])[-1] not in seen
    )
    emb_VD = AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight
    sae_dir = planted_trigger_sae(emb_VD, token).save(tmp_path_factory.mktemp("cond-sae") / "sae", format="saelens")
    yield http, model_dir, sae_dir, with_token, defaults
    http.close()


def _planted_body(model_dir, prompt: str, **kw) -> dict:
    return {"model": {"name": str(model_dir)}, "prompt": prompt, "chat": False, "max_new_tokens": PLANTED_NEW, **kw}


def _conditional(value: float = 40.0) -> list[dict]:
    return [{"feature": STEER, "mode": "add", "value": value, "trigger": {"feature": WATCH, "threshold": 0.0}}]


def test_live_and_chat_steering_change_only_the_completions_holding_the_trigger(planted):
    http, model_dir, sae_dir, with_token, defaults = planted
    sae = {"source": "path", "path": str(sae_dir)}
    for prompt, default in zip(PLAIN, defaults, strict=True):
        r = http.post(
            "/v1/steer", json=_planted_body(model_dir, prompt, sae=sae, hook=PLANTED_HOOK, interventions=_conditional())
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["steered_token_ids"] == default and out["steered"] == out["default"]
        assert out["triggered_tokens"] == 0 and out["kl_from_default"] == pytest.approx(0.0, abs=1e-6)
    r = http.post(
        "/v1/steer", json=_planted_body(model_dir, with_token, sae=sae, hook=PLANTED_HOOK, interventions=_conditional())
    )
    out = r.json()
    assert out["triggered_tokens"] >= 1 and out["steered"] != out["default"] and out["kl_from_default"] > 0

    def chat(content: str, steering: dict | None) -> str:
        body = {"model": str(model_dir), "messages": [{"role": "user", "content": content}], "max_tokens": PLANTED_NEW}
        r = http.post("/v1/chat/completions", json={**body, **({"steering": steering} if steering else {})})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    steering = {"sae": sae, "hook": PLANTED_HOOK, "interventions": _conditional()}
    assert chat(PLAIN[0], steering) == chat(PLAIN[0], None)
    assert chat(with_token, steering) != chat(with_token, None)

    bad = {**steering, "interventions": [{**_conditional()[0], "trigger": {"feature": 0, "threshold": "NaN"}}]}
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "steering": bad})
    assert r.status_code == 422 and "steering.interventions.0.trigger.threshold" in r.text


def test_a_batch_steer_job_with_a_trigger_leaves_the_other_prompts_as_they_were(stack, planted):
    from saeq.client.client import Client

    _, model_dir, sae_dir, with_token, _ = planted
    spec = SteerSpec.model_validate(
        {
            "sae": {"source": "path", "path": str(sae_dir)},
            "model": {"name": str(model_dir)},
            "hook": PLANTED_HOOK,
            "prompts": [*PLAIN, with_token],
            "chat": False,
            "interventions": [{"name": "when-watch", "edits": _conditional()}],
            "max_new_tokens": PLANTED_NEW,
        }
    )
    with Client(stack.url, api_key=stack.admin_key, timeout=60) as client:
        done = client.wait(client.submit(spec)["id"], timeout=180)
        rows = [json.loads(line) for line in client.read(done["id"], "report/completions.jsonl").splitlines()]
    by_prompt = {r["prompt"]: r for r in rows}
    for prompt in PLAIN:
        assert by_prompt[prompt]["steered"] == by_prompt[prompt]["default"]
        assert by_prompt[prompt]["triggered_tokens"] == 0
    assert by_prompt[with_token]["steered"] != by_prompt[with_token]["default"]
    assert by_prompt[with_token]["triggered_tokens"] >= 1
    assert by_prompt[with_token]["edits"][0]["trigger"] == {"feature": WATCH, "threshold": 0.0}
