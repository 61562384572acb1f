"""The local store's partial writes: a process SIGKILLed in the middle of a put leaves its temp file
where the next store that opens sweeps it once it is stale, and no reader ever sees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from saeq.platform.store import TMP_GRACE_S, LocalStore

# A child that streams an object into the store and never finishes: it is killed mid-put.
_WRITER = """
import sys, time
from saeq.platform.store import LocalStore

class Endless:
    def read(self, n):
        print("writing", flush=True)
        time.sleep(0.05)
        return b"x" * 4096

LocalStore(sys.argv[1]).put("jobs/j1/shard-0.bin", Endless())
"""


def test_a_put_killed_midway_leaves_nothing_a_reader_sees_and_is_swept(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    store.put("jobs/j1/done.bin", b"complete")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE)
    assert writer.stdout.readline() == b"writing\n"
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)

    leftovers = [p for p in root.rglob(".tmp-*") if p.is_file()]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    assert [o.key for o in store.list("")] == ["jobs/j1/done.bin"]
    assert not store.exists("jobs/j1/shard-0.bin")

    # Within the grace period a store that opens leaves it (it could be a live put's), after it sweeps.
    LocalStore(root)
    assert leftovers[0].exists()
    stale = time.time() - TMP_GRACE_S - 60
    os.utime(leftovers[0], (stale, stale))
    LocalStore(root)
    assert not leftovers[0].exists()
    assert [p for p in root.rglob(".tmp-*")] == []
    assert store.get("jobs/j1/done.bin") == b"complete"


def test_a_new_store_and_its_objects_are_its_owners_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put("uploads/team-a/u1/corpus.txt", b"private")
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
    assert store.local_path("uploads/team-a/u1/corpus.txt").stat().st_mode & 0o777 == 0o600
