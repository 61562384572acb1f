"""One training run data-parallel over several devices of a node, inside one job: `world` processes
(torch.multiprocessing, spawned), one per device, joined in a torch.distributed group on loopback.

This process reads the data once and hands every global batch to every rank through shared memory
(a bounded queue each, so reading runs a few batches ahead and no further); rank r trains on rows
r::world of it (saeq.ml.distributed) and the ranks take identical steps. Rank 0 sends progress,
checkpoints and the result back; cancellation goes out as an event the ranks agree on each step.
A rank that fails ends the run: the others are stopped and its error is raised here, by type when
it is a saeq JobError (InvalidSpec keeps its field), otherwise as RuntimeError naming the rank.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import Tensor

from saeq import errors
from saeq.ml.activations import Batch
from saeq.ml.distributed import free_port, join_group, leave_group
from saeq.specs import TrainSpec

AHEAD = 4
"""Global batches each rank's queue holds at most: reading runs this far ahead of training."""
_END = None  # sent after the last batch


@dataclass(frozen=True)
class _RankArgs:
    rank: int
    world: int
    port: int
    device: str
    spec: TrainSpec
    resume: bytes | None
    validation: Tensor | None
    validation_contexts: Tensor | None
    progress_every_s: float
    timeout_s: float
    threads: int


def train_data_parallel(
    spec: TrainSpec,
    batches: Iterable[Batch | Tensor],
    *,
    devices: list[str],
    validation: Tensor | None = None,
    validation_contexts: Tensor | None = None,
    on_progress: Callable[[Any], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: Any = None,
    on_checkpoint: Callable[[Any], None] = lambda s: None,
    progress_every_s: float = 2.0,
    timeout_s: float = 300.0,
) -> Any:
    """saeq.jobs.train.train_saes over len(devices) ranks, rank r on devices[r]; the same
    arguments and the same TrainResult (rank 0's SAEs, on the CPU). `timeout_s`: the longest a
    rank waits for its peers or for data before it fails (no hang when one dies)."""
    from saeq.jobs.train import TrainState

    world = len(devices)
    ctx = mp.get_context("spawn")
    inboxes = [ctx.Queue(maxsize=AHEAD) for _ in range(world)]
    outbox, stop = ctx.Queue(), ctx.Event()
    threads = max(1, torch.get_num_threads() // world)
    resume_bytes = resume.to_bytes() if resume is not None else None
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(
                _RankArgs(
                    r,
                    world,
                    port,
                    devices[r],
                    spec,
                    resume_bytes,
                    validation if r == 0 else None,
                    validation_contexts if r == 0 else None,
                    progress_every_s,
                    timeout_s,
                    threads,
                ),
                inboxes[r],
                outbox,
                stop,
            ),
            daemon=True,  # never outlive this process
            name=f"saeq-train-rank{r}",
        )
        for r in range(world)
    ]
    aborted = threading.Event()
    feed = _Feeder(batches, inboxes, aborted)
    try:
        _start(procs)
        feed.start()
        while True:
            msg = _next_message(outbox, procs, feed, timeout_s)
            if should_stop():
                stop.set()  # the ranks see it at their next step, all at the same one
            if msg is None:
                continue
            what, payload = msg
            if what == "progress":
                on_progress(payload)
            elif what == "checkpoint":
                on_checkpoint(TrainState.from_bytes(payload))
            elif what == "error":
                raise _rebuilt(payload)
            elif what == "result":
                return _unpacked(payload)
    finally:
        aborted.set()
        _end(procs)


class _Feeder(threading.Thread):
    """Reads the batches (once) and puts each into every rank's queue; any error is kept for the
    caller to raise."""

    def __init__(self, batches: Iterable[Batch | Tensor], inboxes: list, aborted: threading.Event):
        super().__init__(daemon=True, name="saeq-train-feed")
        self.batches, self.inboxes, self.aborted = batches, inboxes, aborted
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for item in self.batches:
                item = _shared(item)
                for q in self.inboxes:
                    if not self._put(q, item):
                        return
            for q in self.inboxes:
                self._put(q, _END)
        except BaseException as e:
            self.error = e

    def _put(self, q, item) -> bool:
        while not self.aborted.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False


def _shared(item: Batch | Tensor) -> Batch | Tensor:
    """The item with its activations in shared memory, moved there once: every rank's queue then
    passes the same pages. A tensor whose memory cannot be shared as it is (pinned) is copied."""
    acts = item.acts if isinstance(item, Batch) else item
    if not acts.is_shared() and not acts.is_cuda:
        try:
            acts.share_memory_()
        except RuntimeError:
            acts = acts.clone().share_memory_()
    return item._replace(acts=acts) if isinstance(item, Batch) else acts


def _next_message(outbox, procs: list, feed: _Feeder, timeout_s: float) -> tuple[str, Any] | None:
    """The ranks' next message, or None after a short wait; raises when the data source failed or a
    rank died without saying why."""
    try:
        return outbox.get(timeout=0.2)
    except queue.Empty:
        pass
    if feed.error is not None:
        raise feed.error
    for r, p in enumerate(procs):
        if p.exitcode is not None and p.exitcode != 0:
            try:  # its error report may have arrived just now
                msg = outbox.get(timeout=1.0)
                if msg[0] == "error":
                    return msg
            except queue.Empty:
                pass
            raise RuntimeError(f"data-parallel training: rank {r} died (exit code {p.exitcode})")
    return None


def _start(procs: list) -> None:
    """Start the ranks, also from a Celery prefork pool's worker (billiard's process stands in for
    multiprocessing's own there): multiprocessing refuses children to a daemonic process (so that
    none outlives it), and billiard's authkey refuses the pickling that spawn does. This run ends
    its ranks itself (`_end`; they are daemonic too, so they die with this process's normal exit)."""
    me = multiprocessing.current_process()
    config = me._config  # pyright: ignore[reportAttributeAccessIssue]
    saved = dict(config)
    config["daemon"] = False
    config["authkey"] = multiprocessing.process.AuthenticationString(bytes(me.authkey))  # pyright: ignore[reportAttributeAccessIssue]
    try:
        for p in procs:
            p.authkey = bytes(me.authkey)  # its copy of the config, taken when it was built
            p.start()
    finally:
        config.clear()
        config.update(saved)


def _end(procs: list) -> None:
    """Stop every rank still running: terminate, then kill what ignores it."""
    procs = [p for p in procs if p.pid is not None]  # started
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _rebuilt(report: dict) -> BaseException:
    """The exception a rank reported, rebuilt here: saeq's JobErrors by type (with their field)."""
    cls = getattr(errors, report["type"], None)
    if isinstance(cls, type) and issubclass(cls, errors.JobError):
        return cls(report["message"], field=report["field"])
    return RuntimeError(
        f"data-parallel training: rank {report['rank']} failed: {report['type']}: {report['message']}\n"
        f"{report['traceback']}"
    )


# --- in each rank -------------------------------------------------------------------------------


def _rank_main(a: _RankArgs, inbox, outbox, stop) -> None:
    from saeq.jobs.train import TrainState, train_saes

    torch.set_num_threads(a.threads)
    try:
        group = join_group(a.rank, a.world, addr="127.0.0.1", port=a.port, device=a.device, timeout_s=a.timeout_s)
        lead = a.rank == 0
        result = train_saes(
            a.spec,
            _received(inbox, a.timeout_s),
            validation=a.validation,
            validation_contexts=a.validation_contexts,
            device=a.device,
            group=group,
            should_stop=stop.is_set,
            resume=TrainState.from_bytes(a.resume) if a.resume is not None else None,
            on_progress=(lambda p: outbox.put(("progress", p))) if lead else (lambda p: None),
            on_checkpoint=(lambda s: outbox.put(("checkpoint", s.to_bytes()))) if lead else (lambda s: None),
            progress_every_s=a.progress_every_s,
        )
        if lead:
            outbox.put(("result", _packed(result)))
    except BaseException as e:
        outbox.put(
            (
                "error",
                {
                    "rank": a.rank,
                    "type": type(e).__name__,
                    "message": e.message if isinstance(e, errors.JobError) else str(e),
                    "field": e.field if isinstance(e, errors.JobError) else None,
                    "traceback": traceback.format_exc(),
                },
            )
        )
    finally:
        leave_group()
        outbox.close()
        outbox.join_thread()  # the message is on its way before the process exits


def _packed(result: Any) -> bytes:
    """The result as bytes (no shared memory to outlive this process), each SAE as what rebuilds it:
    torch modules do not pickle through SparseAutoencoder's architecture-dispatching __new__."""
    saes = {
        name: {
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "architecture": sae.architecture,
            "k": sae.k,
            "bandwidth": sae.bandwidth,
            "options": sae.options(),
            "state": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        }
        for name, sae in result.saes.items()
    }
    result.saes = {}
    return pickle.dumps((result, saes))


def _unpacked(payload: bytes) -> Any:
    from saeq.ml.sae import SparseAutoencoder

    result, saes = pickle.loads(payload)
    for name, s in saes.items():
        kw = {"k": s["k"]} if s["k"] is not None else {}
        sae = SparseAutoencoder(s["d_in"], s["d_sae"], s["architecture"], **kw, **s["options"])
        sae.load_state_dict(s["state"])
        sae.bandwidth = s["bandwidth"]
        result.saes[name] = sae.eval()
    return result


def _received(inbox, timeout_s: float) -> Iterator[Batch | Tensor]:
    while True:
        try:
            item = inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no batch for {timeout_s:.0f} s: the reading process is gone") from None
        if item is _END:
            return
        yield item
