"""A node-local cache of activation shards, content-addressed by sha256 and bounded in size (LRU),
that every job and process on a node shares, so a sweep's or a retry's second read skips S3.

Safe across processes by the file system alone:
- publish is atomic: a shard is written to a temp file in its final directory, fsynced, then
  `os.replace`d under its name, so a reader sees a whole file or none;
- a miss takes an `fcntl.flock` on a lock file (one of 4096, by the sha's first three hex digits)
  and looks again before it fetches, so two processes (or threads: flock locks an open file
  description, not a process) that miss the same shard at once fetch it once;
- eviction only unlinks. On POSIX an unlinked file's data lives until its last descriptor closes,
  and a reader opens before it reads, so eviction never cuts a read short: a reader that lost the
  race to open finds no file and fetches again;
- every hit is verified: what is read must hash to its name, else the entry is deleted (a logged
  `corrupt`) and the shard fetched again. Recency is the file's mtime, touched on each hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from saeq.errors import StoreError

log = logging.getLogger("saeq.platform.shard_cache")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"
TMP_GRACE_S = 3600.0
"""A temp file untouched this long was left by a killed process: eviction sweeps it."""
DISK_HEADROOM = 0.1
"""Share of the free disk the cache leaves to others when its budget is clamped."""

Event = Callable[[str, int], None]
"""on_event(name, n_bytes): name is hit, miss, evicted or corrupt."""


class ShardMismatch(StoreError):
    """Bytes fetched for a shard do not hash to the sha256 its manifest gives."""


@dataclass
class CacheCounts:
    """What this process's cache did; the worker exports the same as Prometheus counters."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    """Bytes served from the cache (hits)."""
    bytes_fetched: int = 0
    """Bytes fetched from the store on misses."""
    evictions: int = 0
    bytes_evicted: int = 0
    corrupt: int = 0
    """Cached entries whose bytes did not match their sha256 (deleted, then fetched again)."""


class ShardCache:
    """Shards under `root/ab/abcdef...` (their sha256), at most `max_bytes` in all once a publish
    has evicted the least recently used. A shard larger than the whole budget is served uncached."""

    def __init__(self, root: str | Path, max_bytes: int, *, on_event: Event | None = None):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        (self.root / LOCK_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.counts = CacheCounts()
        self._on_event = on_event
        self._counts_lock = threading.Lock()

    @classmethod
    def within_disk(cls, root: str | Path, max_bytes: int, *, on_event: Event | None = None) -> ShardCache:
        """A cache whose budget is clamped to what the disk can hold: what it holds now plus 90%
        of the free space (a budget the disk cannot meet would fill it before evicting)."""
        cache = cls(root, max_bytes, on_event=on_event)
        room = cache.usage() + int(shutil.disk_usage(cache.root).free * (1 - DISK_HEADROOM))
        if room < max_bytes:
            log.warning("shard cache %s: budget %d bytes clamped to %d (free disk)", cache.root, max_bytes, room)
            cache.max_bytes = max(room, 1)
        return cache

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    # --- reading -------------------------------------------------------------------------------

    def get(self, sha256: str, fetch: Callable[[], bytes]) -> bytes:
        """The shard whose sha256 is `sha256`: from the cache, else `fetch()`ed (verified) and
        cached. ShardMismatch when what `fetch` returns is not that shard."""
        path = self.path(sha256)
        data = self._read_verified(path, sha256)
        if data is not None:
            return data
        with self._lock(sha256):
            data = self._read_verified(path, sha256)  # fetched by another while we waited
            if data is not None:
                return data
            data = fetch()
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise ShardMismatch(f"fetched {len(data)} bytes with sha256 {actual}, expected {sha256}")
            self._count("miss", len(data))
            published = self._publish(path, data)
        if published:
            self.evict()
        return data

    def _read_verified(self, path: Path, sha256: str) -> bytes | None:
        """The entry's bytes if present and whole; a corrupt one is deleted and None returned."""
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115  closed below; open before read: see module doc
        except FileNotFoundError:
            return None
        with f:
            data = f.readall()  # one allocation of the file's size, read straight into it
            if hashlib.sha256(data).hexdigest() == sha256:  # hashlib lets go of the GIL here
                with contextlib.suppress(OSError):
                    os.utime(f.fileno())  # recency for LRU
                self._count("hit", len(data))
                return data
            log.warning("shard cache: %s is corrupt (its bytes do not hash to its name); fetching it again", path)
            self._count("corrupt", len(data))
            with contextlib.suppress(FileNotFoundError):
                # Only the file we read: another process may have replaced it with a good one.
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    os.unlink(path)
        return None

    # --- writing and evicting ------------------------------------------------------------------

    def _publish(self, path: Path, data: bytes) -> bool:
        """Write `data` under `path` atomically; False when it was not cached (too large, disk full)."""
        if len(data) > self.max_bytes:
            return False
        tmp = None
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return True
        except OSError as e:  # a full or read-only disk: the job goes on with the bytes it has
            log.warning("shard cache: could not store %s: %s", path.name, e)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return False

    def evict(self) -> int:
        """Delete least recently used entries until the cache holds at most `max_bytes`; -> the
        bytes deleted. One evictor at a time on the node (a lock file), so two do not over-evict."""
        with self._flock(self.root / LOCK_DIR / "evict.lock"):
            entries = sorted(self._entries())  # oldest mtime first
            total = sum(size for _, size, _ in entries)
            freed = 0
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:  # deleted as corrupt by another process
                    pass
                else:
                    self._count("evicted", size)
                    freed += size
                total -= size
        return freed

    def usage(self) -> int:
        """Bytes the cache holds now."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry; sweeps temp files a killed process left."""
        out, stale = [], time.time() - TMP_GRACE_S
        with os.scandir(self.root) as tops:
            dirs = [d.path for d in tops if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        for d in dirs:
            with contextlib.suppress(FileNotFoundError), os.scandir(d) as files:
                for f in files:
                    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                        st = f.stat(follow_symlinks=False)
                        if _SHA256.match(f.name):
                            out.append((st.st_mtime, st.st_size, Path(f.path)))
                        elif f.name.startswith(TMP_PREFIX) and st.st_mtime < stale:
                            os.unlink(f.path)
        return out

    # --- locks and counts ----------------------------------------------------------------------

    def _lock(self, sha256: str):
        return self._flock(self.root / LOCK_DIR / f"{sha256[:3]}.lock")

    @staticmethod
    @contextlib.contextmanager
    def _flock(path: Path) -> Iterator[None]:
        # flock, not fcntl.lockf: POSIX record locks belong to the process, so they would not keep
        # two threads of one job apart; a flock belongs to the open file description. The kernel
        # drops it when its holder dies, so a killed fetch never wedges the node.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _count(self, event: str, n_bytes: int) -> None:
        with self._counts_lock:
            c = self.counts
            if event == "hit":
                c.hits += 1
                c.bytes_read += n_bytes
            elif event == "miss":
                c.misses += 1
                c.bytes_fetched += n_bytes
            elif event == "evicted":
                c.evictions += 1
                c.bytes_evicted += n_bytes
            else:
                c.corrupt += 1
        if self._on_event is not None:
            try:
                self._on_event(event, n_bytes)
            except Exception as e:  # metrics never fail a read
                log.warning("shard cache: on_event(%s) failed: %s", event, e)
