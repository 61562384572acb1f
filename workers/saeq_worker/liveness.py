"""The liveness file: touched by the worker's event loop while it runs, idle or busy.

The probe, `python -m saeq_worker.liveness --max-age 120`, checks its age. The touch is a timer of
the consumer's event loop, not a thread of its own, so a parent whose loop hangs stops touching and
fails the probe; a running job's heartbeat thread touches it too (saeq_worker.running).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("saeq.worker")


def touch(path: str) -> None:
    try:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    except OSError as e:  # a full or read-only disk must not stop the worker; the probe will tell
        log.warning("cannot touch the liveness file %s: %s", path, e)


def heartbeat_step(path: str, every_s: float):
    """A consumer bootstep that touches `path` every `every_s` seconds from the event loop."""
    from celery import bootsteps

    class HeartbeatFile(bootsteps.StartStopStep):
        def __init__(self, consumer, **kwargs):
            self.tref = None
            super().__init__(consumer, **kwargs)

        def start(self, consumer) -> None:
            touch(path)
            self.tref = consumer.timer.call_repeatedly(every_s, touch, (path,), priority=10)

        def stop(self, consumer) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

        shutdown = stop

    return HeartbeatFile


def is_fresh(path: str, max_age_s: float) -> bool:
    try:
        return time.time() - os.path.getmtime(path) < max_age_s
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saeq_worker.liveness", description="Exit 0 while the worker's liveness file is fresh."
    )
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--file", default=os.environ.get("SAEQ_HEARTBEAT_FILE"), help="default: $SAEQ_HEARTBEAT_FILE")
    args = parser.parse_args(argv)
    if not args.file:
        print("no liveness file: set SAEQ_HEARTBEAT_FILE", file=sys.stderr)
        return 2
    if is_fresh(args.file, args.max_age):
        return 0
    print(f"{args.file} is missing or older than {args.max_age:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
