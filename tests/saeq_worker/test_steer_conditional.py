"""Conditional steering through the API and a real worker (issue 21, acceptance 3): with a planted
trigger (a feature that fires on one token only), live `POST /v1/steer`, the chat endpoint and a
batch steer job change only the completions whose text holds that token."""

from __future__ import annotations

import json

import httpx
import pytest

from saeq.specs import SteerSpec
from tests.planted_trigger import HOOK, STEER, WATCH, planted_trigger_sae
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

PLAIN = ["The history of the city", "Cats are small animals"]
CANDIDATES = ["A bridge over water", "Paris is a large port", "Music of the mountain"]
"""The prompt holding the trigger: the first whose last token no PLAIN prompt or default completion
has (last, so the edit there moves the next token's prediction directly, on a random tiny model)."""
NEW = 8


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
        r = http.post("/v1/steer", json=_body(model_dir, prompt))
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


def _body(model_dir, prompt: str, **kw) -> dict:
    return {"model": {"name": str(model_dir)}, "prompt": prompt, "chat": False, "max_new_tokens": NEW, **kw}


def _conditional(value: float = 40.0) -> list[dict]:
    return [{"feature": STEER, "mode": "add", "value": value, "trigger": {"feature": WATCH, "threshold": 0.0}}]


def test_live_and_chat_steering_change_only_the_completions_holding_the_trigger(planted):
    http, model_dir, sae_dir, with_token, defaults = planted
    sae = {"source": "path", "path": str(sae_dir)}
    for prompt, default in zip(PLAIN, defaults, strict=True):
        r = http.post("/v1/steer", json=_body(model_dir, prompt, sae=sae, hook=HOOK, interventions=_conditional()))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["steered_token_ids"] == default and out["steered"] == out["default"]
        assert out["triggered_tokens"] == 0 and out["kl_from_default"] == pytest.approx(0.0, abs=1e-6)
    r = http.post("/v1/steer", json=_body(model_dir, with_token, sae=sae, hook=HOOK, interventions=_conditional()))
    out = r.json()
    assert out["triggered_tokens"] >= 1 and out["steered"] != out["default"] and out["kl_from_default"] > 0

    def chat(content: str, steering: dict | None) -> str:
        body = {"model": str(model_dir), "messages": [{"role": "user", "content": content}], "max_tokens": NEW}
        r = http.post("/v1/chat/completions", json={**body, **({"steering": steering} if steering else {})})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    steering = {"sae": sae, "hook": HOOK, "interventions": _conditional()}
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
            "hook": HOOK,
            "prompts": [*PLAIN, with_token],
            "chat": False,
            "interventions": [{"name": "when-watch", "edits": _conditional()}],
            "max_new_tokens": NEW,
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
