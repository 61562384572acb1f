"""Corpus uploads: text and JSONL are checked before anything is stored."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from saeq_api.main import create_app
from tests.helpers import unprivileged, wait_for


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
    assert api.get("/v1/uploads", headers=member).json() == {
        "uploads": [],
        "next_cursor": None,
        "used_bytes": 0,
        "max_upload_bytes": 100,
        "n_uploads": 0,
        "max_uploads": 1000,
    }
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
    listed = api.get("/v1/uploads").json()
    assert listed["used_bytes"] == 0 and listed["uploads"] == []  # nothing counted for the failed write
    assert _upload(api, "notes.txt", b"a doc").status_code == 201  # fixed: uploads work again


def test_concurrent_uploads_cannot_overshoot_the_quota(api):
    from concurrent.futures import ThreadPoolExecutor

    assert api.put("/v1/admin/teams/racers/quota", json={"max_upload_bytes": 300}).status_code == 200
    member = api.key_for("racers")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _upload(api, f"r{i}.txt", b"z" * 60, member).status_code, range(12)))
    assert sorted(codes) == [201] * 5 + [413] * 7
    assert api.get("/v1/uploads", headers=member).json()["used_bytes"] == 300


def _listed(api, headers, **params) -> dict:
    r = api.get("/v1/uploads", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_delete_while_the_bytes_are_stored_is_409_and_leaves_nothing_uncounted(api, s3_srv):
    """A DELETE racing the put used to free the quota and drop the record, then the put stored an
    object that nobody counted or could delete. Now the upload is `storing` until its put ends."""
    from concurrent.futures import ThreadPoolExecutor

    member = api.key_for("racing")
    store = api.app.state.services.store
    with ThreadPoolExecutor(2) as pool:
        s3_srv.pause()  # the put hangs: the upload is reserved, its bytes are not stored yet
        try:
            posted = pool.submit(_upload, api, "slow.txt", b"a slow doc\n" * 100, member)
            listed = wait_for(lambda: _listed(api, member)["uploads"], timeout=30, what="the upload listed")
            assert listed[0]["state"] == "storing" and _listed(api, member)["used_bytes"] == 1100
            deleted = pool.submit(api.delete, f"/v1/uploads/{listed[0]['upload_id']}", headers=member)
            early = deleted.result(timeout=5)  # the old code listed the hung store here
        finally:
            s3_srv.resume()
        assert early.status_code == 409, early.text
        assert "storing" in early.json()["detail"]
        up = posted.result(timeout=60)
    assert up.status_code == 201, up.text
    prefix = f"uploads/{up.json()['upload_id']}/"
    assert [o.size for o in store.list(prefix)] == [1100]
    after = _listed(api, member)
    assert [(u["upload_id"], u["state"]) for u in after["uploads"]] == [(up.json()["upload_id"], "stored")]
    assert after["used_bytes"] == 1100 and after["n_uploads"] == 1  # the stored bytes are counted
    assert api.delete(f"/v1/uploads/{up.json()['upload_id']}", headers=member).status_code == 204
    assert store.list(prefix) == [] and _listed(api, member)["used_bytes"] == 0


def test_upload_count_quota_is_429_naming_max_uploads_until_one_is_deleted(api):
    assert api.put("/v1/admin/teams/counted/quota", json={"max_uploads": 3}).status_code == 200
    member = api.key_for("counted")
    ids = [_upload(api, f"t{i}.txt", b"x", member).json()["upload_id"] for i in range(3)]
    refused = _upload(api, "t3.txt", b"x", member)
    assert refused.status_code == 429, refused.text
    assert "max_uploads=3" in refused.json()["detail"]
    assert _listed(api, member)["n_uploads"] == 3 and _listed(api, member)["max_uploads"] == 3
    assert api.delete(f"/v1/uploads/{ids[0]}", headers=member).status_code == 204
    assert _upload(api, "t3.txt", b"x", member).status_code == 201


def test_uploads_per_minute_are_bounded_by_submits_per_minute(api):
    assert api.put("/v1/admin/teams/hasty/quota", json={"submits_per_minute": 2}).status_code == 200
    member = api.key_for("hasty")
    assert [_upload(api, f"h{i}.txt", b"x", member).status_code for i in range(2)] == [201, 201]
    refused = _upload(api, "h2.txt", b"x", member)
    assert refused.status_code == 429, refused.text
    assert "submits_per_minute=2" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _listed(api, member)["n_uploads"] == 2  # nothing stored, nothing counted for it


def test_upload_listing_is_paged_oldest_first(api):
    member = api.key_for("pager")
    ids = [_upload(api, f"p{i}.txt", b"doc", member).json()["upload_id"] for i in range(5)]
    seen, cursor = [], None
    for _ in range(5):
        page = _listed(api, member, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["uploads"]) <= 2 and page["n_uploads"] == 5 and page["used_bytes"] == 15
        seen += [u["upload_id"] for u in page["uploads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids  # every upload once, oldest first
    for upload_id in ids[1:4:2]:
        assert api.delete(f"/v1/uploads/{upload_id}", headers=member).status_code == 204
    first = _listed(api, member, limit=2)
    rest = _listed(api, member, limit=2, cursor=first["next_cursor"])
    assert [u["upload_id"] for u in first["uploads"] + rest["uploads"]] == [ids[0], ids[2], ids[4]]
    assert rest["next_cursor"] is None and rest["n_uploads"] == 3
    r = api.get("/v1/uploads", headers=member, params={"limit": 501})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.limit"
    r = api.get("/v1/uploads", headers=member, params={"cursor": "not a cursor"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.cursor"


def test_a_stale_storing_upload_can_be_deleted_and_its_late_bytes_go_too(api, s3_srv, monkeypatch):
    """An upload left `storing` (its API died mid-put) is deletable once stale; a put still
    running then finds its record gone and deletes what it stored: nothing stays uncounted."""
    from concurrent.futures import ThreadPoolExecutor

    from saeq_api.routes import uploads

    member = api.key_for("stale")
    store = api.app.state.services.store
    with ThreadPoolExecutor(2) as pool:
        s3_srv.pause()
        try:
            posted = pool.submit(_upload, api, "late.txt", b"a late doc\n" * 10, member)
            upload_id = wait_for(lambda: _listed(api, member)["uploads"], timeout=30, what="listed")[0]["upload_id"]
            monkeypatch.setattr(uploads, "STORING_STALE_S", 0.0)
            deleted = pool.submit(api.delete, f"/v1/uploads/{upload_id}", headers=member)
            time.sleep(1)
        finally:
            s3_srv.resume()
        assert deleted.result(timeout=60).status_code == 204
        late = posted.result(timeout=60)
    assert late.status_code in (201, 409), late.text  # 409: its put ended after the delete
    assert store.list(f"uploads/{upload_id}/") == []
    assert _listed(api, member) | {"max_upload_bytes": 0} == {
        "uploads": [],
        "next_cursor": None,
        "used_bytes": 0,
        "n_uploads": 0,
        "max_uploads": 1000,
        "max_upload_bytes": 0,
    }
