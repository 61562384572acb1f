"""ObjectStore behaviour, the same for both backends: a local directory and S3 (real SeaweedFS)."""

import hashlib
import io
import os
import re
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from saeq.store import AlreadyExists, LocalStore, MissingObject, S3Store, sign_local


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A fresh, empty store per test: a new directory, or a new bucket on the session server."""
    if request.param == "local":
        return LocalStore(tmp_path / "store", url_base="http://api.test", signing_key=b"k" * 32)
    srv = request.getfixturevalue("s3_srv")
    s3 = S3Store(srv.endpoint, srv.access_key, srv.secret_key, f"t-{uuid.uuid4().hex[:12]}")
    s3.ensure_bucket()
    return s3


def test_put_then_read_back(store, tmp_path):
    store.put("jobs/j1/spec.json", b'{"kind": "train"}', content_type="application/json")
    store.put("jobs/j1/stream.bin", io.BytesIO(b"streamed"), length=8)
    store.put("jobs/j1/view.bin", memoryview(b"from a view"))
    src = tmp_path / "upload.bin"
    src.write_bytes(b"from a file")
    store.put_file("jobs/j1/file.bin", src)

    assert store.get("jobs/j1/spec.json") == b'{"kind": "train"}'
    assert store.get("jobs/j1/stream.bin") == b"streamed"
    assert store.get("jobs/j1/view.bin") == b"from a view"
    assert store.exists("jobs/j1/file.bin")
    assert store.size("jobs/j1/file.bin") == len(b"from a file")
    store.get_file("jobs/j1/file.bin", tmp_path / "download.bin")
    assert (tmp_path / "download.bin").read_bytes() == b"from a file"


def test_empty_object(store):
    store.put("empty", b"")
    assert store.exists("empty") and store.size("empty") == 0 and store.get("empty") == b""


def test_list_is_a_plain_string_prefix(store):
    for key in ["runs/1/a", "runs/1/b/c", "runs/10/x", "runs/2/y", "other/z"]:
        store.put(key, key.encode())

    def keys(prefix):
        return [o.key for o in store.list(prefix)]

    assert keys("runs/1/") == ["runs/1/a", "runs/1/b/c"]
    assert keys("runs/1") == ["runs/1/a", "runs/1/b/c", "runs/10/x"]
    assert keys("runs/") == ["runs/1/a", "runs/1/b/c", "runs/10/x", "runs/2/y"]
    assert keys("") == ["other/z", "runs/1/a", "runs/1/b/c", "runs/10/x", "runs/2/y"]
    assert keys("nothing/") == [] and keys("runs/3") == []
    assert {o.key: o.size for o in store.list("runs/1/")} == {"runs/1/a": 8, "runs/1/b/c": 10}


def test_keys_are_write_once(store, tmp_path):
    store.put("model/sae.safetensors", b"original")
    with pytest.raises(AlreadyExists):
        store.put("model/sae.safetensors", b"replacement")
    with pytest.raises(AlreadyExists):
        store.put("model/sae.safetensors", io.BytesIO(b"replacement"), length=11)
    src = tmp_path / "other.bin"
    src.write_bytes(b"replacement")
    with pytest.raises(AlreadyExists):
        store.put_file("model/sae.safetensors", src)
    assert store.get("model/sae.safetensors") == b"original"
    assert [o.key for o in store.list("model/")] == ["model/sae.safetensors"]  # no temp files


def test_large_streamed_object(store, tmp_path):
    size = 40 << 20
    data = os.urandom(1 << 20) * 40  # (40 MiB) spans several 16 MiB S3 parts
    with open(tmp_path / "big.bin", "wb") as f:
        f.write(data)
    with open(tmp_path / "big.bin", "rb") as f:  # a stream of unknown length
        store.put("acts/big.bin", f)
    assert store.size("acts/big.bin") == size
    assert hashlib.sha256(store.get("acts/big.bin")).digest() == hashlib.sha256(data).digest()


def test_missing_objects(store, tmp_path):
    store.put("runs/1/a", b"x")
    for key in ["nope", "runs/1/b", "runs", "runs/1"]:  # a prefix of objects is no object
        assert not store.exists(key)
        with pytest.raises(MissingObject):
            store.get(key)
        with pytest.raises(MissingObject):
            store.size(key)
        with pytest.raises(MissingObject):
            store.get_file(key, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_delete(store):
    store.put("tmp/x", b"x")
    store.delete("tmp/x")
    assert not store.exists("tmp/x") and store.list("tmp/") == []
    store.delete("tmp/x")  # deleting what is gone is no error


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "a/./b", "a/", "", "a\\b"])
def test_invalid_keys_are_rejected(store, key, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    calls = {"put": lambda: store.put(key, b"x"), "put_file": lambda: store.put_file(key, src),
             "get": lambda: store.get(key), "exists": lambda: store.exists(key),
             "size": lambda: store.size(key), "delete": lambda: store.delete(key),
             "download_url": lambda: store.download_url(key)}
    assert [name for name, call in calls.items() if not _raises(ValueError, call)] == []
    assert store.list("") == []
    if isinstance(store, LocalStore):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "store"]


def test_download_url(store):
    key = "labels/j 1/latents.json"  # a space: the URL must quote it
    store.put(key, b'{"0": "commas"}')
    url = store.download_url(key, expires_s=600)
    if isinstance(store, S3Store):
        resp = httpx.get(url)
        assert resp.status_code == 200 and resp.content == b'{"0": "commas"}'
        forged = re.sub(r"X-Amz-Signature=\w+", "X-Amz-Signature=" + "0" * 64, url)
        assert httpx.get(forged).status_code == 403
    else:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == ("http", "api.test",
                                                            "/v1/files/labels/j%201/latents.json")
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert int(q["expires"]) - time.time() == pytest.approx(600, abs=5)
        assert q["sig"] == sign_local(store.signing_key, key, int(q["expires"]))


def _raises(exc: type[Exception], call) -> bool:
    try:
        call()
    except exc:
        return True
    return False
