"""Corpus uploads: text and JSONL are checked before anything is stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from saeq_api.main import create_app

from tests.helpers import unprivileged


def test_upload_text_and_use_it(api):
    r = api.post("/v1/uploads", files={"file": ("notes.txt", b"First doc.\n\nSecond doc.\n", "text/plain")})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["n_documents"] == 2 and up["key"].endswith("/notes.txt")
    spec = {"kind": "harvest", "corpus": {"source": "upload", "upload_id": up["upload_id"]}}
    assert api.post("/v1/jobs", json={"spec": spec}).status_code == 201


def test_upload_that_is_not_text_is_refused(api):
    r = api.post("/v1/uploads", files={"file": ("weights.txt", bytes(range(256)) * 10, "text/plain")})
    assert r.status_code == 422 and "weights.txt" in r.json()["detail"][0]["msg"]
    r = api.post("/v1/uploads", files={"file": ("c.jsonl", b'{"text": "ok"}\n{"txt": "no"}\n', "text/plain")})
    assert r.status_code == 422 and "line 2" in r.json()["detail"][0]["msg"]
    r = api.post("/v1/uploads", files={"file": ("c.pdf", b"%PDF", "application/pdf")})
    assert r.status_code == 422 and "c.pdf" in r.json()["detail"][0]["msg"]


def test_upload_name_cannot_escape_its_prefix(api):
    r = api.post("/v1/uploads", files={"file": ("../../etc/x.txt", b"hello", "text/plain")})
    assert r.status_code == 201
    key = r.json()["key"]
    assert key.startswith("uploads/") and ".." not in key and key.endswith("/x.txt")


def _upload(api, name: str, data: bytes, headers=None):
    return api.post("/v1/uploads", files={"file": (name, data, "text/plain")}, headers=headers or {})


def test_deeply_nested_jsonl_is_refused_naming_the_line(api):
    nested = b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    r = _upload(api, "deep.jsonl", b'{"text": "fine"}\n' + nested + b"\n")
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["field"] == "file" and "line 2" in err["msg"] and "deep.jsonl" in err["msg"]


def test_team_upload_quota_413_until_an_upload_is_deleted(api, s3_srv):
    assert api.put("/v1/admin/teams/qteam/quota", json={"max_upload_bytes": 100}).status_code == 200
    member = api.key_for("qteam")
    first = _upload(api, "a.txt", b"x" * 60, member)
    assert first.status_code == 201, first.text
    refused = _upload(api, "b.txt", b"y" * 60, member)
    assert refused.status_code == 413, refused.text
    assert "max_upload_bytes" in refused.json()["detail"] and "100" in refused.json()["detail"]
    listed = api.get("/v1/uploads", headers=member).json()
    assert listed["used_bytes"] == 60 and listed["max_upload_bytes"] == 100
    assert [u["upload_id"] for u in listed["uploads"]] == [first.json()["upload_id"]]

    assert api.delete(f"/v1/uploads/{first.json()['upload_id']}", headers=member).status_code == 204
    assert api.get("/v1/uploads", headers=member).json() == {"uploads": [], "used_bytes": 0,
                                                             "max_upload_bytes": 100}
    assert _upload(api, "b.txt", b"y" * 60, member).status_code == 201  # the bytes were freed


def test_delete_removes_the_bytes_and_another_team_cannot(api):
    store = api.app.state.services.store
    owner, other = api.key_for("owners"), api.key_for("others")
    up = _upload(api, "c.txt", b"one doc", owner).json()
    prefix = f"uploads/{up['upload_id']}/"
    assert api.delete(f"/v1/uploads/{up['upload_id']}", headers=other).status_code == 404
    assert [o.size for o in store.list(prefix)] == [7]  # still there, still usable by its team
    spec = {"kind": "harvest", "corpus": {"source": "upload", "upload_id": up["upload_id"]}}
    assert api.post("/v1/jobs", json={"spec": spec}, headers=owner).status_code == 201

    assert api.delete(f"/v1/uploads/{up['upload_id']}", headers=owner).status_code == 204
    assert store.list(prefix) == []
    assert api.delete(f"/v1/uploads/{up['upload_id']}", headers=owner).status_code == 404
    r = api.post("/v1/jobs", json={"spec": spec}, headers=owner)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "spec.corpus.upload_id"


@pytest.fixture
def local_api(api_settings, tmp_path):
    """The API on a local directory store (the default of `saeq up`)."""
    settings = api_settings.model_copy(update={"store": f"file://{tmp_path / 'store'}"})
    key = settings.bootstrap_admin_key.get_secret_value()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c, tmp_path / "store"


def test_unwritable_local_store_is_a_store_error_naming_the_directory(local_api):
    api, root = local_api
    root.chmod(0o555)  # readable, not writable: no upload directory can be made
    try:
        with unprivileged():
            r = _upload(api, "notes.txt", b"a doc")
    finally:
        root.chmod(0o755)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "store_error"
    assert str(root) in body["detail"] and "writ" in body["detail"] and "SAEQ_STORE" in body["detail"]
    assert api.get("/v1/uploads").json()["used_bytes"] == 0  # nothing counted for the failed write
    assert _upload(api, "notes.txt", b"a doc").status_code == 201  # fixed: uploads work again


def test_concurrent_uploads_cannot_overshoot_the_quota(api):
    from concurrent.futures import ThreadPoolExecutor

    assert api.put("/v1/admin/teams/racers/quota", json={"max_upload_bytes": 300}).status_code == 200
    member = api.key_for("racers")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _upload(api, f"r{i}.txt", b"z" * 60, member).status_code, range(12)))
    assert sorted(codes) == [201] * 5 + [413] * 7
    assert api.get("/v1/uploads", headers=member).json()["used_bytes"] == 300
