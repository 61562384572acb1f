"""A job's progress as `Client.wait(progress=...)` shows it: a tqdm bar on a terminal, and on a
file or pipe (`make demo > demo.log`, CI) a plain line every few seconds, since a bar's carriage
returns would pile up there into one line of megabytes."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LINE_EVERY_S = 5.0
"""How often a non-terminal gets a progress line (and the job's last state when it ends)."""
MAX_LINE = 200
"""Longest progress line written to a file or pipe; the figures are cut to fit."""


class JobProgress:
    """Shows one job's progress; `update(job)` after each poll, `close()` when it ends."""

    def __init__(self, stream: TextIO | None = None, *, every_s: float = LINE_EVERY_S):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._last_line_at: float | None = None
        self._pending = ""  # the newest line not written yet: the end's line if nothing follows
        self._bar: Any = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=1000,
                unit="",
                file=self.stream,
                disable=False,  # over TQDM_DISABLE, which quiets library bars (saeq.dev.demo)
                bar_format="{desc} |{bar}| {percentage:3.0f}% {elapsed}<{remaining}",
            )

    def update(self, job: dict) -> None:
        p = job["progress"]
        description = f"{job['kind']} {job['id'][:8]} {job['state']}:{p['phase']}"
        figures = " ".join(f"{k}={_fmt(v)}" for k, v in p["figures"].items())
        if self._bar is not None:
            self._bar.n = int(1000 * p["fraction"])
            self._bar.set_description_str(f"{description} {figures}")
            self._bar.refresh()
            return
        elapsed = _clock(time.monotonic() - self.started)
        head = f"{description} {100 * p['fraction']:5.1f}% {elapsed}"
        line = f"{head}  {figures}" if figures else head
        self._pending = line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"
        now = time.monotonic()
        if self._last_line_at is None or now - self._last_line_at >= self.every_s:
            self._write_pending(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._pending:
            self._write_pending(time.monotonic())

    def _write_pending(self, now: float) -> None:
        self.stream.write(self._pending + "\n")
        self.stream.flush()
        self._pending, self._last_line_at = "", now


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: no bar
        return False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)
