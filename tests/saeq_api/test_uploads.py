"""Corpus uploads: text and JSONL are checked before anything is stored."""

from __future__ import annotations


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
