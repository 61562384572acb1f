"""ObjectStore behaviour, the same for both backends: a local directory and S3 (real SeaweedFS)."""

import hashlib
import io
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from saeq.errors import StoreError
from saeq.platform.store import AlreadyExists, LocalStore, MissingObject, S3Store, sign_local, transient_s3_error
from tests.servers import s3_server


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
    calls = {
        "put": lambda: store.put(key, b"x"),
        "put_file": lambda: store.put_file(key, src),
        "get": lambda: store.get(key),
        "exists": lambda: store.exists(key),
        "size": lambda: store.size(key),
        "delete": lambda: store.delete(key),
        "download_url": lambda: store.download_url(key),
    }
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
        assert (parts.scheme, parts.netloc, parts.path) == ("http", "api.test", "/v1/files/labels/j%201/latents.json")
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert int(q["expires"]) - time.time() == pytest.approx(600, abs=5)
        assert q["sig"] == sign_local(store.signing_key, key, int(q["expires"]))


def _raises(exc: type[Exception], call) -> bool:
    try:
        call()
    except exc:
        return True
    return False


# ---- S3 outages: on a SeaweedFS of this module's own, so the session's server never goes down


@pytest.fixture(scope="module")
def flaky_s3(tmp_path_factory):
    """A SeaweedFS that tests stop and start again (data kept), or pause (hung)."""
    with s3_server(log_dir=tmp_path_factory.mktemp("flaky-s3")) as srv:
        yield srv


def _s3_store(srv, **kw) -> S3Store:
    store = S3Store(srv.endpoint, srv.access_key, srv.secret_key, f"t-{uuid.uuid4().hex[:12]}", **kw)
    store.ensure_bucket()
    return store


def test_an_outage_shorter_than_the_retry_budget_is_ridden_out(flaky_s3):
    store = _s3_store(flaky_s3, retry_s=30, timeout_s=0.5)
    data = os.urandom(1 << 20)
    store.put("jobs/j1/before.bin", data)
    with ThreadPoolExecutor(2) as pool:
        flaky_s3.stop()  # down: connections refused
        try:
            put = pool.submit(store.put, "jobs/j1/during.bin", io.BytesIO(data[::-1]), length=len(data))
            get = pool.submit(store.get, "jobs/j1/before.bin")
            time.sleep(0.5)
            assert not put.done() and not get.done()  # still retrying
        finally:
            flaky_s3.start(keep_data=True)
        assert put.result(timeout=30) is None and get.result(timeout=30) == data

        flaky_s3.pause()  # hung: connections accepted, never answered; each try times out
        try:
            put = pool.submit(store.put, "jobs/j1/hung.bin", b"written while S3 hung")
            time.sleep(1.0)  # two timed-out tries
            assert not put.done()
        finally:
            flaky_s3.resume()
        put.result(timeout=30)
    assert store.get("jobs/j1/during.bin") == data[::-1]  # intact, not a partial or doubled stream
    assert store.get("jobs/j1/hung.bin") == b"written while S3 hung"
    assert [o.key for o in store.list("jobs/j1/")] == ["jobs/j1/before.bin", "jobs/j1/during.bin", "jobs/j1/hung.bin"]


def test_an_outage_longer_than_the_retry_budget_fails_clearly_and_loses_nothing(flaky_s3):
    store = _s3_store(flaky_s3, retry_s=2, timeout_s=0.5)
    kept, late = "jobs/j2/shard-00000.safetensors", "jobs/j2/shard-00001.safetensors"
    store.put(kept, b"stored before the outage")
    flaky_s3.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as e:
            store.put(late, b"late")
        took = time.monotonic() - t0
    finally:
        flaky_s3.start(keep_data=True)
    assert 2 <= took < 5
    assert e.value.code == "store_error" and not isinstance(e.value, (MissingObject, AlreadyExists))
    msg = str(e.value)
    assert msg.startswith(f"S3 put of '{late}' at {flaky_s3.endpoint}")
    assert "still failing after retrying for" in msg and "SAEQ_S3_RETRY_S=2)" in msg
    assert "Connection refused" in msg or "NewConnectionError" in msg, msg
    # Back: its volume server may answer InternalError for a moment, which a longer budget rides out.
    store = S3Store(flaky_s3.endpoint, flaky_s3.access_key, flaky_s3.secret_key, store.bucket, retry_s=30)
    assert store.get(kept) == b"stored before the outage" and not store.exists(late)
    store.put(late, b"late")  # the job's next attempt writes it
    assert store.get(late) == b"late"


def test_missing_and_existing_keys_are_answered_at_once(flaky_s3):
    store = _s3_store(flaky_s3, retry_s=30)
    store.put("k", b"x")
    t0 = time.monotonic()
    with pytest.raises(MissingObject):
        store.get("nope")
    with pytest.raises(MissingObject):
        store.size("nope")
    with pytest.raises(AlreadyExists):
        store.put("k", b"y")
    assert time.monotonic() - t0 < 1


def test_which_failures_are_retried():
    from minio.error import S3Error, ServerError
    from urllib3 import HTTPResponse
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    def s3_error(status: int, code: str) -> S3Error:
        return S3Error(HTTPResponse(status=status), code, "message", "/bucket/key", "request", "host")

    for e in (
        s3_error(503, "SlowDown"),
        s3_error(500, "InternalError"),
        s3_error(429, "TooManyRequests"),
        ServerError("server failed with HTTP status code 502", 502),
        ConnectionRefusedError(),
        ProtocolError("Connection aborted.", ConnectionResetError()),
        ReadTimeoutError(None, "/bucket/key", "Read timed out."),
    ):
        assert transient_s3_error(e), e
    for e in (
        s3_error(404, "NoSuchKey"),
        s3_error(403, "AccessDenied"),
        s3_error(400, "InvalidArgument"),
        FileNotFoundError("/tmp/upload.bin"),
        ValueError("invalid object key"),
    ):
        assert not transient_s3_error(e), e
