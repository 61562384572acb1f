"""Object store: one interface, two backends (S3 through the `minio` client, a local directory).

Keys are write-once: `put` refuses to replace an object, so a published artifact never changes
under a reader. Writes are atomic: an object is either absent or complete.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from saeq.errors import StoreError

log = logging.getLogger("saeq.platform.store")


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


def __getattr__(name: str) -> Any:
    """S3Store and transient_s3_error live in saeq.platform.s3_store (imported on first use)."""
    if name in ("S3Store", "transient_s3_error"):
        from saeq.platform import s3_store

        return getattr(s3_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
