"""A store that cannot be written fails with StoreError (code store_error, so a job ends with
store_error rather than internal) and a message saying what to check, for both backends."""

from __future__ import annotations

import uuid

import pytest

from saeq.errors import StoreError
from saeq.platform.store import LocalStore, S3Store
from tests.helpers import unprivileged


def test_local_store_directory_not_writable(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.root.chmod(0o555)
    try:
        with unprivileged(), pytest.raises(StoreError) as e:
            store.put("runs/r1/sae.safetensors", b"weights")
    finally:
        store.root.chmod(0o755)
    assert e.value.code == "store_error"
    assert "runs/r1/sae.safetensors" in e.value.message and str(store.root) in e.value.message
    assert "Permission denied" in e.value.message and "SAEQ_STORE" in e.value.message


def test_a_file_where_a_directory_should_be(tmp_path):
    store = LocalStore(tmp_path / "store")
    (store.root / "runs").write_bytes(b"not a directory")
    with pytest.raises(StoreError) as e:
        store.put("runs/r1/x.json", b"{}")
    assert e.value.code == "store_error" and "Not a directory" in e.value.message


def test_s3_refusing_writes_is_a_store_error(s3_srv):
    store = S3Store(s3_srv.endpoint, s3_srv.access_key, "not-the-secret", s3_srv.bucket, retry_s=0)
    with pytest.raises(StoreError) as e:
        store.put(f"runs/{uuid.uuid4().hex}/x.json", b"{}")
    assert e.value.code == "store_error"
    assert s3_srv.bucket in e.value.message and "SAEQ_S3_ACCESS_KEY" in e.value.message
