"""A harvest split across workers: slice i writes shards [a_i, b_i) of what a single harvest
writes, under the same keys and with the same bytes, then its slice manifest; the job's own task
merges them into one harvest manifest, published last.

The job's task (the parent) holds the job's lease throughout, so the job stays `running` and the
reaper and cancel work as for any job. It first writes shard 0 itself: every shard's sink counts
are taken against shard 0's median norm, so no slice can start before it. It then queues the
other slices as `saeq.harvest_slice` tasks and runs slices itself while any is unclaimed, so a
deployment with one worker process finishes too. Slices are claimed in Redis with a renewed TTL
(saeq.platform.harvest_slices); a slice that dies lets go and is taken again, redoing only its
missing shards; a slice with a manifest is never redone. A slice that fails fails the job.
A Celery chord was not used: the app runs without a result backend, and the job's lease must be
held by one process while the slices run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from saeq import keys
from saeq.errors import Cancelled, JobError
from saeq.jobs.harvest import harvest_activations, slice_ranges
from saeq.ml.corpus import iter_documents
from saeq.ml.models import LoadedModel
from saeq.platform.harvest_slices import SliceBoard
from saeq.platform.registry import Registry
from saeq.platform.store import AlreadyExists, ObjectStore
from saeq.specs import HarvestSpec, parse_spec
from saeq.specs.manifests import HarvestManifest
from saeq_worker.harvest import SendSlice, _previous_shards, empty_corpus, harvest_manifest, store_shard
from saeq_worker.resolve import cached_model
from saeq_worker.running import RunningJob

log = logging.getLogger("saeq.worker")
SLICE_FORMAT = "saeq.harvest-slice/1"
POLL_S = 0.5


def run_split_harvest(job: RunningJob, *, cache_dir: str, send_slice: SendSlice) -> str:
    spec: HarvestSpec = job.spec
    store, ranges = job.store, slice_ranges(spec)
    board = SliceBoard(job.registry.r, job.id, ttl_s=job.registry.lease_ttl_ms / 1000)
    board.clear_errors()  # this attempt gives every unfinished slice a new chance
    job.report(0.0, "loading model", spec.model.name, force=True)
    lm = cached_model(spec.model, job.device, cache_dir)
    job.check()
    _first_shard(job, lm)  # the sink rule's reference, before any slice runs
    done = lambda i: store.exists(keys.harvest_slice_manifest(job.id, i))
    pending = [i for i in range(len(ranges)) if not done(i)]
    if len(pending) < len(ranges):
        job.event("resumed", f"{len(ranges) - len(pending)} of {len(ranges)} slices done by earlier attempts")
    for i in pending[1:]:  # the first pending one this task starts on at once
        send_slice(job.id, i)
    job.event("slices", f"{len(ranges)} slices: shards {[(r.start, r.stop) for r in ranges]}")

    def report(phase: str) -> None:
        tokens = board.tokens()
        job.report(tokens / spec.max_tokens, phase, f"{tokens:,} of {spec.max_tokens:,} tokens", tokens=tokens)

    while pending := [i for i in pending if not done(i)]:
        job.check()
        if errors := board.errors():
            index, error = min(errors.items())
            raise _slice_failed(index, error, ranges[index].start, ranges[index].stop, len(ranges))
        for i in pending:
            if (token := board.claim(i)) is not None:
                _run_here(job, board, i, token, lm, on_tokens=lambda: report("harvest"))
                break
        else:
            report("waiting for slices")
            time.sleep(POLL_S)
    key = job.publish(HarvestManifest.model_validate(merge_slices(store, job.id, spec, lm)))
    report("done")
    return key


def _run_here(
    job: RunningJob, board: SliceBoard, index: int, token: str, lm: LoadedModel, on_tokens: Callable[[], None]
) -> None:
    """Run a slice in the job's own task; its failure is the job's, named after the slice."""
    spec: HarvestSpec = job.spec
    r = slice_ranges(spec)[index]
    with _holding(board, index, token, job.should_stop) as stop:
        try:
            run_slice(
                job.store,
                board,
                spec,
                job.id,
                index,
                lm,
                should_stop=stop,
                on_tokens=on_tokens,
                on_event=lambda message, **figures: job.event("slice", message, **figures),
            )
        except Cancelled:
            job.check()  # a cancel or the time limit ends the job
            if job.should_stop():
                raise
            log.warning("job %s: lost the claim on slice %d; another runner has it", job.id, index)
        except JobError as e:
            error = {"code": e.code, "message": e.message, "field": e.field}
            raise _slice_failed(index, error, r.start, r.stop, spec.slices) from e


def _first_shard(job: RunningJob, lm: LoadedModel) -> None:
    spec: HarvestSpec = job.spec
    if store_exists_all(job.store, job.id, spec, 0):
        return
    docs = iter_documents(spec.corpus, seed=spec.seed, store=job.store)
    shards = harvest_activations(spec, lm, docs, start_shard=0, stop_shard=1, should_stop=job.should_stop)
    if not any(store_shard(job.store, job.id, spec, shard) for shard in shards):
        raise empty_corpus(spec)


def store_exists_all(store: ObjectStore, job_id: str, spec: HarvestSpec, index: int) -> bool:
    return all(store.exists(keys.harvest_shard(job_id, hook, index)) for hook in spec.hooks)


def run_slice(
    store: ObjectStore,
    board: SliceBoard,
    spec: HarvestSpec,
    job_id: str,
    index: int,
    lm: LoadedModel,
    *,
    should_stop: Callable[[], bool],
    on_tokens: Callable[[], None] = lambda: None,
    on_event: Callable[..., None] = lambda message, **figures: None,
) -> None:
    """Write slice `index`'s missing shards, then its slice manifest (the sign it is done).
    `on_event(message, **figures)` hears where it starts (the job's events)."""
    r = slice_ranges(spec)[index]
    entries = _previous_shards(store, job_id, spec, r.start, r.stop)
    on_event(
        f"slice {index} (shards {r.start}..{r.stop - 1}): {len(entries)} shards from earlier attempts",
        slice=index,
        shards_before=len(entries),
    )
    reference = entries[:1] if r.start == 0 else _previous_shards(store, job_id, spec, 0, 1)
    medians = {h: float(m["median_norm"]) for h, m in reference[0]["meta"].items()} if reference else None
    per_shard_tokens = (spec.shard_tokens // spec.context_len) * spec.context_len
    board.set_tokens(index, sum(e["n_tokens"] for e in entries))
    last = [0.0]

    def on_batch(tokens_done: int) -> None:  # tokens_done counts every shard before this slice
        if time.monotonic() - last[0] > POLL_S:
            last[0] = time.monotonic()
            board.set_tokens(index, tokens_done - r.start * per_shard_tokens)
            on_tokens()

    if len(entries) < len(r):
        docs = iter_documents(spec.corpus, seed=spec.seed, store=store)
        start = r.start + len(entries)
        for shard in harvest_activations(
            spec,
            lm,
            docs,
            start_shard=start,
            stop_shard=r.stop,
            median_norms=medians,
            should_stop=should_stop,
            on_batch=on_batch,
        ):
            entries.append(store_shard(store, job_id, spec, shard))
            if should_stop():
                raise Cancelled("slice stopped")
    board.set_tokens(index, sum(e["n_tokens"] for e in entries))
    body = {
        "format": SLICE_FORMAT,
        "job_id": job_id,
        "slice": index,
        "shard_range": [r.start, r.stop],
        "shards": [{k: v for k, v in e.items() if k != "doc_ids"} for e in entries],
        "doc_ids": sorted(set().union(*(e["doc_ids"] for e in entries)) - {-1}),
    }
    try:
        store.put(
            keys.harvest_slice_manifest(job_id, index), json.dumps(body).encode(), content_type="application/json"
        )
    except AlreadyExists:  # another runner finished it first: the same shards, the same content
        pass


def merge_slices(store: ObjectStore, job_id: str, spec: HarvestSpec, lm: LoadedModel) -> dict:
    """The job's harvest manifest from its slices' manifests, as a single harvest writes it."""
    entries: list[dict] = []
    for i, r in enumerate(slice_ranges(spec)):
        part = json.loads(store.get(keys.harvest_slice_manifest(job_id, i)))
        shards = part["shards"]
        if shards and (
            len(entries) != r.start or [s["index"] for s in shards] != list(range(r.start, r.start + len(shards)))
        ):
            # A slice after the corpus's end has no shards; one with shards follows a full one.
            raise RuntimeError(f"slice {i} holds shards {[s['index'] for s in shards]} after {len(entries)} shards")
        if shards:
            shards[0]["doc_ids"] = set(part["doc_ids"])  # the union is all the merge reads
        entries += [{"doc_ids": set(), **s} for s in shards]
    tokens = sum(e["n_tokens"] for e in entries)
    if tokens == 0:
        raise empty_corpus(spec)
    return harvest_manifest(job_id, spec, lm, entries, tokens)


def _slice_failed(index: int, error: dict, start: int, stop: int, n: int) -> JobError:
    e = JobError(
        f"slice {index} of {n} (shards {start}..{stop - 1}) failed: {error['message']}", field=error.get("field")
    )
    e.code = error.get("code") or "internal"
    return e


@contextmanager
def _holding(board: SliceBoard, index: int, token: str, stop_also: Callable[[], bool]) -> Iterator[Callable[[], bool]]:
    """Renew the claim on slice `index` while the body runs -> a should_stop for it: true once
    the claim is lost or `stop_also` says so. The claim is let go at the end."""
    lost, done = threading.Event(), threading.Event()

    def renew() -> None:
        every_s = board.ttl_ms / 3000
        while not done.wait(every_s):
            try:
                if not board.renew(index, token):
                    lost.set()
                    return
            except Exception as e:  # Redis briefly away: the TTL has slack
                log.warning("slice %d: claim not renewed: %s", index, e)

    beat = threading.Thread(target=renew, daemon=True, name=f"slice-{index}")
    beat.start()
    try:
        yield lambda: lost.is_set() or stop_also()
    finally:
        done.set()
        beat.join(timeout=5)
        board.release(index, token)


def run_slice_task(
    registry: Registry,
    store: ObjectStore,
    job_id: str,
    index: int,
    *,
    device: str,
    cache_dir: str,
    admit: Callable[[HarvestSpec], None],
) -> None:
    """The `saeq.harvest_slice` task: run slice `index` unless it is done, taken, or its job is
    no longer running. Stops when the job is cancelled or ends; a failure is recorded for the job."""
    record = registry.get(job_id)
    if record is None or record["state"] != "running" or store.exists(keys.harvest_slice_manifest(job_id, index)):
        return
    spec = parse_spec(record["spec"])
    assert isinstance(spec, HarvestSpec), record["kind"]
    board = SliceBoard(registry.r, job_id, ttl_s=registry.lease_ttl_ms / 1000)
    if (token := board.claim(index)) is None:
        return
    job_stopped = _job_watch(registry, job_id)
    with _holding(board, index, token, job_stopped) as stop:
        try:
            admit(spec)
            lm = cached_model(spec.model, device, cache_dir)
            run_slice(
                store,
                board,
                spec,
                job_id,
                index,
                lm,
                should_stop=stop,
                on_event=lambda message, **figures: registry.event(job_id, "slice", message, **figures),
            )
        except Cancelled:
            log.info("job %s: slice %d stopped", job_id, index)
        except JobError as e:
            board.fail(index, {"code": e.code, "message": e.message, "field": e.field})
        except Exception as e:
            log.exception("job %s: slice %d crashed", job_id, index)
            board.fail(index, {"code": "internal", "message": f"{type(e).__name__}: {e}", "field": None})


def _job_watch(registry: Registry, job_id: str, every_s: float = 1.0) -> Callable[[], bool]:
    """A cheap flag, true once the job is cancelled or no longer running (read at most every `every_s`)."""
    seen = {"at": 0.0, "stopped": False}

    def stopped() -> bool:
        if not seen["stopped"] and time.monotonic() - seen["at"] > every_s:
            seen["at"] = time.monotonic()
            try:
                record = registry.get(job_id)
            except Exception:  # Redis away: keep working, the parent decides
                return False
            seen["stopped"] = (
                record is None
                or record["state"] != "running"
                or bool(record.get("cancel_requested"))
                or bool(record.get("preempt"))  # the job yields: its slices stop too, their stored shards kept
            )
        return bool(seen["stopped"])

    return stopped
