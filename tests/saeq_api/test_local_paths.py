"""Paths in requests at the API (issue 15): a NUL or `..` in a model, GGUF or SAE path is a 422
naming the field, never a 500, and live requests (`/v1/steer`, `/v1/chat/completions`) have their
local paths checked against the roots before any worker sees them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from saeq_api.main import create_app

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def api_rooted(api, api_settings, tmp_path):
    """An API allowing local paths under tmp/models only, giving up on live requests after 2 s
    (no worker runs here: a request the API let through would time out, 504)."""
    (tmp_path / "models" / "llama").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "models" / "escape").symlink_to(tmp_path / "outside")
    settings = api_settings.model_copy(update={"local_path_roots": [str(tmp_path / "models")], "live_timeout_s": 2.0})
    with TestClient(create_app(settings), headers=api.headers) as c:
        c.models, c.outside = tmp_path / "models", tmp_path / "outside"
        yield c


def _fields(resp) -> list[str]:
    assert resp.status_code == 422, resp.text
    return [d["field"] for d in resp.json()["detail"]]


@pytest.mark.parametrize(
    "model, field",
    [
        ({"name": "/models/llama\x00"}, "spec.model.name"),
        ({"name": "/models/../etc"}, "spec.model.name"),
        ({"name": "llama\x00"}, "spec.model.name"),
        ({"name": "/models/llama", "gguf_file": "w\x00.gguf"}, "spec.model.gguf_file"),
        ({"name": "/models/llama", "gguf_file": "../../etc/passwd"}, "spec.model.gguf_file"),
        ({"name": "me/llama", "revision": "../../../../etc/passwd"}, "spec.model.revision"),
    ],
)
def test_bad_model_paths_are_422_naming_the_field(api_rooted, model, field):
    resp = api_rooted.post("/v1/jobs", json={"spec": {"kind": "harvest", "model": model, "hooks": [HOOK]}})
    assert _fields(resp) == [field]


@pytest.mark.parametrize("path", ["/saes/x\x00", "/saes/../etc", "relative/sae"])
def test_bad_sae_paths_are_422_naming_the_field(api_rooted, path):
    spec = {
        "kind": "evaluate",
        "sae": {"source": "path", "path": path},
        "model": {"name": "me/llama"},
        "hook": HOOK,
        "corpus": {"source": "builtin"},
    }
    assert _fields(api_rooted.post("/v1/jobs", json={"spec": spec})) == ["spec.sae.path"]
    steer = {"sae": {"source": "path", "path": path}, "hook": HOOK, "prompt": "hi"}
    assert _fields(api_rooted.post("/v1/steer", json=steer)) == ["sae.path"]


def test_live_requests_have_their_local_paths_checked_at_the_api(api_rooted):
    inside, outside, linked = (
        str(api_rooted.models / "llama"),
        str(api_rooted.outside),
        str(api_rooted.models / "escape"),
    )
    cases = [
        ("/v1/steer", {"model": {"name": outside}, "prompt": "hi"}, "model.name"),
        ("/v1/steer", {"model": {"name": linked}, "prompt": "hi"}, "model.name"),
        (
            "/v1/steer",
            {"sae": {"source": "path", "path": outside}, "model": {"name": inside}, "hook": HOOK, "prompt": "hi"},
            "sae.path",
        ),
        ("/v1/chat/completions", {"model": outside, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        (
            "/v1/chat/completions",
            {
                "model": inside,
                "messages": [{"role": "user", "content": "hi"}],
                "steering": {
                    "sae": {"source": "path", "path": linked},
                    "hook": HOOK,
                    "interventions": [{"feature": 0}],
                },
            },
            "steering.sae.path",
        ),
        ("/v1/chat/completions", {"model": "/etc\x00", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ]
    for route, body, field in cases:
        resp = api_rooted.post(route, json=body)
        assert _fields(resp) == [field], (route, body)
        assert str(api_rooted.models) in resp.text or "control character" in resp.text
    chat = api_rooted.post("/v1/chat/completions", json=cases[3][1]).json()
    assert chat["error"]["param"] == "model"  # OpenAI's error shape names it too
