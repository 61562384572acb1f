"""Object store: one interface, two backends (S3 through the `minio` client, a local directory).

Keys are write-once: `put` refuses to replace an object, so a published artifact never changes
under a reader. Writes are atomic: an object is either absent or complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol, TypeVar
from urllib.parse import quote

from saeq.errors import StoreError
from saeq.retry import RetryCallState, retrying

log = logging.getLogger("saeq.platform.store")
T = TypeVar("T")


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
    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> None: ...
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

    def __init__(self, root: str | Path, *, url_base: str = "", signing_key: bytes = b"", link_ttl_s: int = 3600):
        self.root = Path(root).resolve()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new store: its owner's only
        self.url_base = url_base.rstrip("/")
        self.signing_key = signing_key
        self.link_ttl_s = link_ttl_s
        # Partial writes live in one directory (on the same file system, so a finished one is
        # linked into place), where those a killed process left are cheap to find and sweep.
        self.tmp_dir = self.root / TMP_DIR
        try:
            self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
            self.sweep_temp_files()
        except OSError as e:  # a read-only mount: nothing to write, nothing to sweep
            log.warning("cannot sweep partial writes in %s: %s", self.tmp_dir, e)

    def sweep_temp_files(self) -> int:
        """Delete partial writes untouched for the grace period (a live put touches its file as it
        writes); the number deleted."""
        cutoff = time.time() - TMP_GRACE_S
        swept = 0
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                try:
                    if entry.name.startswith(".tmp-") and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        swept += 1
                except FileNotFoundError:  # another process swept it first
                    pass
        return swept

    def local_path(self, key: str) -> Path:
        """The file behind a key (which may not exist yet)."""
        if _check_key(key).split("/", 1)[0] == TMP_DIR:
            raise ValueError(f"invalid object key {key!r}: {TMP_DIR}/ holds partial writes")
        return self.root / key

    def put(self, key, data, *, length=None, content_type="application/octet-stream"):
        path = self.local_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=".tmp-")
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
        except OSError as e:  # not writable, disk full, a file where a directory should be
            raise StoreError(self._failed("write", key, e)) from e

    def _failed(self, operation: str, key: str, e: OSError) -> str:
        where = f" on {e.filename}" if e.filename else ""
        return (
            f"cannot {operation} object {key!r} in the local store {self.root}: "
            f"{e.strerror or e}{where} ({type(e).__name__}). Check that the API's and the "
            f"workers' user can write to the SAEQ_STORE directory {self.root} (its owner and "
            "mode, a read-only mount) and that its disk has room."
        )

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
        for dirpath, dirs, files in os.walk(start):
            if Path(dirpath) == self.root and TMP_DIR in dirs:
                dirs.remove(TMP_DIR)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    out.append(ObjectInfo(rel, Path(dirpath, name).stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key):
        try:
            self.local_path(key).unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(self._failed("delete", key, e)) from e

    def download_url(self, key, expires_s=3600):
        _check_key(key)
        expires = int(time.time()) + min(expires_s, self.link_ttl_s)
        sig = sign_local(self.signing_key, key, expires)
        return f"{self.url_base}/v1/files/{quote(key)}?expires={expires}&sig={sig}"

    def link_refusal(self, key: str, expires: int, sig: str) -> str | None:
        """Why a download link for `key` is refused (for a 403), or None when this store issued it
        and it is still valid. A link never outlives the store's link TTL, whoever signed it."""
        now = time.time()
        if expires < now:
            return "download link expired"
        if expires > now + self.link_ttl_s + LINK_CLOCK_SKEW_S:
            return (
                f"download link refused: its expires lies {expires - int(now)} s ahead, more than "
                f"links live here ({self.link_ttl_s} s)"
            )
        if not hmac.compare_digest(sign_local(self.signing_key, key, expires).encode(), sig.encode()):
            return "bad download signature"
        return None


TMP_DIR = ".tmp"
"""The directory of the local store's partial writes."""
TMP_GRACE_S = 3600
"""A partial write untouched this long belongs to a killed process: a store that opens sweeps it."""
LINK_CLOCK_SKEW_S = 60
"""How far the clocks of the API replica that issued a link and the one that checks it may differ."""


def sign_local(signing_key: bytes, key: str, expires: int) -> str:
    return hmac.new(signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


class S3Store:
    """An S3 bucket (MinIO, SeaweedFS, AWS) through the `minio` client.

    Every operation is retried through transient failures (connection refused or reset, timeouts,
    5xx answers such as 503 SlowDown) with exponential backoff and jitter for `retry_s` seconds,
    then fails with a StoreError naming the operation, the key and the endpoint. Not-found and
    already-exists answer at once.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        public_endpoint: str | None = None,
        retry_s: float = 60.0,
        timeout_s: float = 30.0,
    ):
        import certifi
        import urllib3
        from minio import Minio

        self.endpoint, self.bucket, self.retry_s = endpoint, bucket, retry_s
        # One try per request at the HTTP level: minio's default pool retries 5 times with
        # 5-minute timeouts, which would multiply our own bounded retries into half an hour.
        # `timeout_s` bounds each connect and each wait for bytes, not a whole transfer.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
        )
        # Presigned URLs must name the host that users reach, which may differ from the internal one.
        self.url_client = (
            Minio(
                public_endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region or "us-east-1",
            )
            if public_endpoint
            else self.client
        )

    def _retrying(
        self,
        operation: str,
        key: str,
        call: Callable[[], T],
        *,
        rewind: Callable[[], object] | None = None,
        once: bool = False,
    ) -> T:
        """`call()`, again after each transient failure (`rewind()` first) until `retry_s` has
        passed, then StoreError; with `once`, no second try. Other errors go straight up."""

        def give_up(error: BaseException | None, state: RetryCallState) -> NoReturn:
            assert error is not None  # only errors are retried here
            why = (
                "not retried: the data is a stream that cannot be sent again"
                if once
                else f"still failing after retrying for {state.seconds_since_start or 0.0:.1f} s "
                f"({state.attempt_number} attempts; SAEQ_S3_RETRY_S={self.retry_s:g})"
            )
            raise StoreError(
                f"S3 {operation} of {key!r} at {self.endpoint} (bucket {self.bucket}) failed, {why}: {_describe(error)}"
            ) from error

        policy = retrying(
            f"S3 {operation} of {key!r} at {self.endpoint}",
            deadline_s=self.retry_s,
            is_transient=lambda e: isinstance(e, Exception) and transient_s3_error(e),
            first_delay_s=_FIRST_DELAY_S,
            max_delay_s=_MAX_DELAY_S,
            once=once,
            before_retry=rewind,
            give_up=give_up,
            log=log,
            describe=_describe,
        )
        return policy(call)

    def ensure_bucket(self) -> None:
        from minio.error import S3Error

        def ensure():
            try:
                if not self.client.bucket_exists(self.bucket):
                    self.client.make_bucket(self.bucket)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        try:
            self._retrying("bucket check", self.bucket, ensure)
        except S3Error as e:
            raise StoreError(f"cannot create bucket {self.bucket!r} at {self.endpoint}: {e}") from e

    def _stat(self, key: str, operation: str):
        from minio.error import S3Error

        def stat():
            try:
                return self.client.stat_object(self.bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise

        return self._retrying(operation, _check_key(key), stat)

    def put(self, key, data, *, length=None, content_type="application/octet-stream"):
        self._check_absent(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            length = len(data)
            data = io.BytesIO(bytes(data))
        # A retry sends the stream again from where this put found it; one that cannot seek back
        # gets a single try. (A try whose answer was lost may have stored the object: sending the
        # same bytes again replaces it with itself.)
        seekable = getattr(data, "seekable", lambda: False)()
        at = data.tell() if seekable else 0
        with self._write_refused(key):
            self._retrying(
                "put",
                key,
                lambda: self.client.put_object(
                    self.bucket,
                    key,
                    data,
                    length=length if length is not None else -1,
                    part_size=16 << 20,
                    content_type=content_type,
                ),
                rewind=lambda: data.seek(at),
                once=not seekable,
            )

    def put_file(self, key, path):
        self._check_absent(key)
        with self._write_refused(key):
            self._retrying("put", key, lambda: self.client.fput_object(self.bucket, key, str(path)))

    def _check_absent(self, key: str) -> None:
        # Write-once at the application level: each job's keys have one writer (the job's lease).
        with self._write_refused(key):  # a bad key or bucket shows first here
            if self._stat(key, "put") is not None:
                raise AlreadyExists(f"object {key!r} already exists")

    @contextlib.contextmanager
    def _write_refused(self, key: str):
        """A put S3 refused for good (access denied, no such bucket, quota) as a StoreError saying
        what to check, instead of the raw S3Error (transient ones were retried already)."""
        from minio.error import S3Error

        try:
            yield
        except S3Error as e:
            raise StoreError(
                f"S3 refused to write {key!r} to bucket {self.bucket!r} at {self.endpoint}: "
                f"{e.code}: {e.message}. Check that the bucket exists and that the access "
                "key (SAEQ_S3_ACCESS_KEY) may write to it."
            ) from e

    def get(self, key):
        from minio.error import S3Error

        def get():
            try:
                resp = self.client.get_object(self.bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    raise MissingObject(f"no object {key!r}") from None
                raise
            try:
                return resp.read()  # a connection lost midway is retried with the whole get
            finally:
                resp.close()
                resp.release_conn()

        return self._retrying("get", _check_key(key), get)

    def get_file(self, key, path):
        Path(path).write_bytes(self.get(key))

    def exists(self, key):
        return self._stat(key, "exists") is not None

    def size(self, key: str) -> int:
        st = self._stat(key, "size")
        if st is None:
            raise MissingObject(f"no object {key!r}")
        return st.size or 0  # a stat always has a size; minio's types allow None

    def list(self, prefix):
        def list_all():  # the listing is paged: a page lost midway starts the whole list again
            return [
                ObjectInfo(o.object_name, o.size or 0)
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None  # a listing always names its objects; minio's types allow None
            ]

        return sorted(self._retrying("list", prefix, list_all), key=lambda o: o.key)

    def delete(self, key):
        self._retrying("delete", _check_key(key), lambda: self.client.remove_object(self.bucket, key))

    def download_url(self, key, expires_s=3600):
        from datetime import timedelta

        # Signing is local, but without a configured region minio asks the server for it once.
        return self._retrying(
            "presign",
            _check_key(key),
            lambda: self.url_client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s)),
        )


_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 5.0
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
}


def transient_s3_error(e: Exception) -> bool:
    """A failure worth retrying: the connection (refused, reset, timed out) or a 5xx/429 answer.
    Not-found, access denied, bad requests and local file errors are not."""
    from minio.error import InvalidResponseError, S3Error, ServerError
    from urllib3.exceptions import HTTPError

    if isinstance(e, (HTTPError, ConnectionError, TimeoutError)):
        return True
    if isinstance(e, ServerError):
        return e.status_code >= 500 or e.status_code == 429
    if isinstance(e, S3Error):
        status = getattr(e.response, "status", 0) or 0
        return e.code in _TRANSIENT_S3_CODES or status >= 500 or status == 429
    if isinstance(e, InvalidResponseError):  # a non-XML answer, e.g. a proxy's 502 page
        status = getattr(e, "_code", 0) or 0
        return status >= 500 or status == 429
    return False


def _describe(e: BaseException) -> str:
    from urllib3.exceptions import MaxRetryError

    if isinstance(e, MaxRetryError) and e.reason is not None:
        e = e.reason
    return f"{type(e).__name__}: {e}"
