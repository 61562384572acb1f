"""The machinery under saeq.ml.activations' feed: a generator run on a background thread behind a
bounded queue, piece reads on a thread pool, and the gather of a batch onto its device.

Nothing here knows about harvests. `background` keeps the training thread to dequeuing;
`ChunkLoad` lets the last of a chunk's piece reads assemble it (no thread ever waits on another
pool task, so one reader thread cannot deadlock); `Gather` turns parts (pieces' rows, row indices)
into one batch tensor with an index_select per piece, and on CUDA stages it through pinned host buffers with
non-blocking copies on a side stream, an event per buffer so none is reused before its copy ends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")

Part = tuple[list[Tensor], Tensor, Tensor]
"""(sources, bounds, rows): pieces' (n_i, d) rows, (n_pieces + 1,) where each starts when laid end
to end, and (m,) int64 rows of that layout to gather."""

_END = object()
_POLL_S = 0.05
"""How often a blocked producer looks at its stop flag (a consumer's close waits at most this)."""


def background(produce: Callable[[threading.Event], Iterator[T]], *, maxsize: int, name: str) -> Iterator[T]:
    """The items of `produce(stop)`, made on a daemon thread `name` at most `maxsize` ahead of the
    consumer. Its exceptions are raised here, in order. Closing this generator (or dropping it)
    sets `stop`, closes `produce`'s generator on its own thread (its `finally` blocks run there)
    and joins the thread, so nothing is left running."""
    items: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        made = produce(stop)
        try:
            for item in made:
                if not put((True, item)):
                    return
            put((False, _END))
        except BaseException as e:  # handed to the consumer, which raises it
            put((False, e))
        finally:
            close = getattr(made, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if ok:
                yield item
            elif item is _END:
                return
            else:
                raise item
    finally:
        stop.set()
        while True:  # unblock a producer waiting to put
            try:
                items.get_nowait()
            except queue.Empty:
                break
        thread.join()


def wait(future: Future[R], stop: threading.Event | None) -> R:
    """`future.result()`; raises Stopped instead once `stop` is set."""
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except TimeoutError:
            if stop is not None and stop.is_set():
                raise Stopped from None


class Stopped(Exception):
    """The consumer went away while the producer waited."""


class ChunkLoad:
    """A result made of `n_parts` tasks: each task's value is kept by index, and the task that
    completes the set runs `assemble(values)` on its own thread; the first failure wins."""

    def __init__(self, n_parts: int, assemble: Callable[[list[Any]], Any]):
        self.future: Future = Future()
        self._values: list[Any] = [None] * n_parts
        self._missing = n_parts
        self._assemble = assemble
        self._lock = threading.Lock()
        if n_parts == 0:
            self._finish()

    def run(self, index: int, task: Callable[[], Any]) -> None:
        """Run part `index` (on whatever thread calls this)."""
        if self.future.done():  # an earlier part failed: skip the read
            return
        try:
            value = task()
        except BaseException as e:
            with self._lock:
                if not self.future.done():
                    self.future.set_exception(e)
            return
        with self._lock:
            self._values[index] = value
            self._missing -= 1
            last = self._missing == 0 and not self.future.done()
        if last:
            self._finish()

    def _finish(self) -> None:
        try:
            result = self._assemble(self._values)
        except BaseException as e:
            self.future.set_exception(e)
            return
        self.future.set_result(result)


class Gather:
    """Batches of `batch_size` rows gathered from parts (see Part) with index_select. On a CPU target each batch is a new tensor (the consumer may keep it). On CUDA,
    a source on the GPU is gathered there; a host source is gathered into one of `n_slots` pinned
    buffers and copied to the GPU without blocking. Either runs on a side stream and comes with an
    event the consumer's stream must wait for (`handover`)."""

    def __init__(self, device: torch.device, batch_size: int, n_slots: int = 3):
        self.device, self.batch_size = device, batch_size
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._slots: list[Tensor | None] = [None] * n_slots
        self._events: list[torch.cuda.Event | None] = [None] * n_slots
        self._next = 0

    def __call__(self, parts: list[Part]) -> tuple[Tensor, torch.cuda.Event | None]:
        if self.stream is None:
            return _gather(parts, None), None
        with torch.cuda.stream(self.stream):
            if parts[0][0][0].device.type == "cuda":
                batch = _gather(parts, None)
            else:
                batch = self._through_pinned(parts)
            event = torch.cuda.Event()
            event.record(self.stream)
        return batch, event

    def _through_pinned(self, parts: list[Part]) -> Tensor:
        i, self._next = self._next, (self._next + 1) % len(self._slots)
        slot, event = self._slots[i], self._events[i]
        if event is not None:
            event.synchronize()  # the copy out of this buffer has finished: it may be overwritten
        source = parts[0][0][0]
        if slot is None or slot.dtype != source.dtype:
            slot = torch.empty((self.batch_size, source.shape[1]), dtype=source.dtype, pin_memory=True)
            self._slots[i] = slot
        _gather(parts, slot)
        batch = slot.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._events[i] = done
        return batch

    def handover(self, batch: Tensor, event: torch.cuda.Event | None) -> Tensor:
        """On the consumer's thread: make its current stream wait for `batch` to be ready."""
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            batch.record_stream(stream)  # the side stream's allocation is used on this one
        return batch


def _gather(parts: list[Part], out: Tensor | None) -> Tensor:
    """The rows each part names, part after part; within a part, in ascending order (grouped by
    piece, read sequentially), one index_select per piece straight into the output."""
    first = parts[0][0][0]
    n = sum(seg.numel() for _, _, seg in parts)
    if out is None:
        out = torch.empty((n, first.shape[1]), dtype=first.dtype, device=first.device)
    at = 0
    for sources, bounds, seg in parts:
        rows = seg.sort().values  # (m,) rows of the chunk's pieces laid end to end
        cuts = torch.searchsorted(rows, bounds).tolist()  # piece j's rows are rows[cuts[j]:cuts[j + 1]]
        for source, lo, hi, base in zip(sources, cuts[:-1], cuts[1:], bounds.tolist(), strict=False):
            if hi > lo:  # on CUDA the indices go up on the current (side) stream, before the gather
                idx = (rows[lo:hi] - base).to(source.device)
                torch.index_select(source, 0, idx, out=out[at + lo : at + hi])
        at += rows.numel()
    return out
