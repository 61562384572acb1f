"""Object store: one interface, two backends (S3 through the `minio` client, a local directory).

Keys are write-once: `put` refuses to replace an object, so a published artifact never changes
under a reader. Writes are atomic: an object is either absent or complete.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from saeq.errors import StoreError


class AlreadyExists(StoreError):
    """The key is already written; keys are write-once."""


class MissingObject(StoreError):
    """No object at that key."""

    code = "not_found"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes | BinaryIO, *, length: int | None = None,
            content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, path: str | Path) -> None: ...
    def get(self, key: str) -> bytes: ...
    def get_file(self, key: str, path: str | Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def download_url(self, key: str, expires_s: int = 3600) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """A directory on a shared file system. Download URLs point at the API's signed file route."""

    def __init__(self, root: str | Path, *, url_base: str = "", signing_key: bytes = b""):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_base = url_base.rstrip("/")
        self.signing_key = signing_key

    def local_path(self, key: str) -> Path:
        """The file behind a key (which may not exist yet)."""
        return self.root / _check_key(key)

    def put(self, key, data, *, length=None, content_type="application/octet-stream"):
        path = self.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    f.write(data)
                else:
                    while chunk := data.read(1 << 20):
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic and fails if the key exists: write-once
            except FileExistsError:
                raise AlreadyExists(f"object {key!r} already exists") from None
        finally:
            os.unlink(tmp)

    def put_file(self, key, path):
        with open(path, "rb") as f:
            self.put(key, f)

    def get(self, key):
        try:
            return self.local_path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObject(f"no object {key!r}") from None

    def get_file(self, key, path):
        Path(path).write_bytes(self.get(key))

    def exists(self, key):
        return self.local_path(key).is_file()

    def size(self, key):
        path = self.local_path(key)
        if not path.is_file():  # a directory is a prefix of keys, not an object
            raise MissingObject(f"no object {key!r}")
        return path.stat().st_size

    def list(self, prefix):
        # A plain string prefix, as in S3: "runs/1" matches "runs/10/x" too, so walk from the
        # directory part ("runs") and filter.
        start = self.root / prefix.rpartition("/")[0]
        out = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    out.append(ObjectInfo(rel, Path(dirpath, name).stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key):
        self.local_path(key).unlink(missing_ok=True)

    def download_url(self, key, expires_s=3600):
        _check_key(key)
        expires = int(time.time()) + expires_s
        sig = sign_local(self.signing_key, key, expires)
        return f"{self.url_base}/v1/files/{quote(key)}?expires={expires}&sig={sig}"


def sign_local(signing_key: bytes, key: str, expires: int) -> str:
    return hmac.new(signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


class S3Store:
    """An S3 bucket (MinIO, SeaweedFS, AWS) through the `minio` client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, *,
                 secure: bool = False, region: str | None = None, public_endpoint: str | None = None):
        from minio import Minio

        self.bucket = bucket
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            region=region)
        # Presigned URLs must name the host that users reach, which may differ from the internal one.
        self.url_client = (Minio(public_endpoint, access_key=access_key, secret_key=secret_key,
                                 secure=secure, region=region or "us-east-1")
                           if public_endpoint else self.client)

    def ensure_bucket(self) -> None:
        from minio.error import S3Error

        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"cannot create bucket {self.bucket!r}: {e}") from e

    def _stat(self, key: str):
        from minio.error import S3Error

        try:
            return self.client.stat_object(self.bucket, _check_key(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    def put(self, key, data, *, length=None, content_type="application/octet-stream"):
        # Write-once at the application level: each job's keys have one writer (the job's lease).
        if self._stat(key) is not None:
            raise AlreadyExists(f"object {key!r} already exists")
        if isinstance(data, (bytes, bytearray, memoryview)):
            length = len(data)
            data = io.BytesIO(bytes(data))
        self.client.put_object(self.bucket, key, data, length=length if length is not None else -1,
                               part_size=16 << 20, content_type=content_type)

    def put_file(self, key, path):
        if self._stat(key) is not None:
            raise AlreadyExists(f"object {key!r} already exists")
        self.client.fput_object(self.bucket, _check_key(key), str(path))

    def get(self, key):
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, _check_key(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                raise MissingObject(f"no object {key!r}") from None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def get_file(self, key, path):
        Path(path).write_bytes(self.get(key))

    def exists(self, key):
        return self._stat(key) is not None

    def size(self, key):
        st = self._stat(key)
        if st is None:
            raise MissingObject(f"no object {key!r}")
        return st.size

    def list(self, prefix):
        objs = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return sorted((ObjectInfo(o.object_name, o.size) for o in objs), key=lambda o: o.key)

    def delete(self, key):
        self.client.remove_object(self.bucket, _check_key(key))

    def download_url(self, key, expires_s=3600):
        from datetime import timedelta

        return self.url_client.presigned_get_object(self.bucket, _check_key(key),
                                                    expires=timedelta(seconds=expires_s))


