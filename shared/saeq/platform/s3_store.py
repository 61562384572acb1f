"""The S3 object store (MinIO, SeaweedFS, AWS) through the `minio` client, with saeq's retry policy
on transient failures. saeq.platform.store has the ObjectStore protocol and the local store."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from saeq.errors import StoreError
from saeq.platform.store import AlreadyExists, MissingObject, ObjectInfo, _check_key
from saeq.retry import RetryCallState, retrying

log = logging.getLogger("saeq.platform.store")
T = TypeVar("T")


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
