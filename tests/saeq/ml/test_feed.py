"""The feed under training: same batches whatever the prefetch, resume, bounded reads ahead,
no threads left behind, corrupt shards named, stored dtype kept, zero-copy decode, CUDA staging."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import torch

from saeq.errors import Cancelled
from saeq.jobs.train import TrainState, train_from_harvest
from saeq.ml.activations import DataPosition, HarvestData
from saeq.ml.shards import CorruptShard, decode_shard, read_shard, write_shard_bytes
from saeq.platform.store import LocalStore
from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.train import ActivationsRef
from tests.saeq.conftest import fake_harvest, planted_dictionary
from tests.saeq.ml.test_activations import HOOK, JOB, T, ids, labelled_acts

pytestmark = pytest.mark.usefixtures("one_thread")

BASE: dict[str, Any] = {"batch_size": 50, "seed": 3, "shuffle_tokens": 192, "validation_tokens": 200}


@pytest.fixture()
def harvest(tmp_path):
    store = LocalStore(tmp_path / "store")
    return store, fake_harvest(store, JOB, labelled_acts(), context_len=T, shard_tokens=64)


def take(data: HarvestData, n: int, start: DataPosition = DataPosition()) -> list:
    g = data.batches(start)
    try:
        return list(itertools.islice(g, n))
    finally:
        g.close()


def feed_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("saeq-feed")]


@pytest.mark.parametrize(
    "kw",
    [
        {"prefetch_threads": 1},
        {"prefetch_threads": 4, "prefetch_chunks": 3},
        {"prefetch_threads": 2, "cache_bytes": 0},  # nothing resident: every chunk read again
        {"prefetch_threads": 3, "cache_bytes": 0, "queue_batches": 1, "prefetch_chunks": 1},
    ],
    ids=["1-thread", "4-threads", "uncached", "uncached-tight"],
)
def test_the_batches_do_not_depend_on_prefetch_threads_or_residency(harvest, kw):
    store, manifest = harvest
    plain = take(HarvestData(manifest, HOOK, store.get, prefetch_threads=0, **BASE), 45)
    fed = take(HarvestData(manifest, HOOK, store.get, **BASE | kw), 45)
    assert [ids(b.acts) for b in fed] == [ids(b.acts) for b in plain]
    assert [b.position for b in fed] == [b.position for b in plain]
    assert fed[-1].position.epoch >= 2  # crosses epochs, with batches spanning chunks
    # resuming anywhere with threads gives the uninterrupted continuation
    at = plain[22].position
    rest = take(HarvestData(manifest, HOOK, store.get, **BASE | kw), 10, at)
    assert [ids(b.acts) for b in rest] == [ids(b.acts) for b in plain[23:33]]


def settled(reads: list, quiet_s: float = 0.1, limit_s: float = 5.0) -> None:
    """Wait until no read has come for quiet_s: the producer has gone as far ahead as its budget
    lets it. A fixed short sleep measured the machine's load instead (on loaded cores the producer
    had not caught up, and the loose budget looked no looser than the tight one)."""
    deadline, seen, quiet_since = time.monotonic() + limit_s, len(reads), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        if len(reads) != seen:
            seen, quiet_since = len(reads), time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def test_reads_stay_within_the_prefetch_budget_and_the_cache_within_cache_bytes(harvest):
    store, manifest = harvest

    def lead(prefetch_chunks: int) -> int:
        """How many chunks ahead of the consumer the reads got, with a slow consumer."""
        reads: list[str] = []
        reader = lambda key: reads.append(key) or store.get(key)
        data = HarvestData(
            manifest, HOOK, reader, cache_bytes=0, queue_batches=1, prefetch_chunks=prefetch_chunks, **BASE
        )
        order = data.chunks(0) + data.chunks(1) + data.chunks(2)
        pieces_upto = list(itertools.accumulate(len(c) for c in order))  # reads once chunk i is read
        worst, n0 = 0, len(data.chunks(0))
        g = data.batches()
        for b in itertools.islice(g, 20):
            settled(reads)  # the producer races ahead as far as it may
            consumer = b.position.chunk + (n0 if b.position.epoch == 1 else 0)
            read_up_to = next(i for i, n in enumerate(pieces_upto) if n >= len(reads))
            worst = max(worst, read_up_to - consumer)
        g.close()
        assert data.resident_bytes == 0  # cache_bytes=0: nothing kept between chunks
        return worst

    tight, loose = lead(1), lead(6)
    assert tight <= 3, tight  # the chunk being gathered, one queued batch's chunk, one loading
    assert loose > tight
    # a cache smaller than the harvest keeps what fits and no more
    one_shard = len(store.get(manifest["hooks"][HOOK]["shards"][0]["key"]))
    small = HarvestData(manifest, HOOK, store.get, cache_bytes=3 * one_shard, **BASE)
    take(small, 20)
    assert 0 < small.resident_bytes <= 3 * one_shard
    reads: list[str] = []
    everything = HarvestData(manifest, HOOK, lambda k: reads.append(k) or store.get(k), **BASE)  # 2 GiB default
    assert take(everything, 40)[-1].position.epoch >= 2
    train_keys = {p.key for p in everything.train_pieces}
    assert sorted(reads) == sorted(train_keys)  # each shard read once: later epochs read nothing
    assert everything.resident_bytes == sum(len(store.get(k)) for k in train_keys)


def test_closing_or_failing_leaves_no_feed_thread_running(harvest):
    store, manifest = harvest
    before = feed_threads()
    g = HarvestData(manifest, HOOK, store.get, prefetch_threads=4, **BASE).batches()
    next(g)
    assert len(feed_threads()) > len(before)  # the producer and its readers run
    g.close()
    assert feed_threads() == before
    for _batch in HarvestData(manifest, HOOK, store.get, prefetch_threads=2, **BASE).batches():
        break  # the loop held the only reference: dropping it closes the generator (CPython)
    assert feed_threads() == before


def test_a_corrupt_or_short_shard_is_named_in_the_error(harvest):
    store, manifest = harvest
    bad_key = manifest["hooks"][HOOK]["shards"][5]["key"]
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"\xff" * 7, lambda b: b[:8] + b"{not json" + b[17:]):
        reader = lambda key, damage=damage: damage(store.get(key)) if key == bad_key else store.get(key)
        for threads in (0, 3):
            before = feed_threads()
            with pytest.raises(CorruptShard, match=bad_key):
                take(HarvestData(manifest, HOOK, reader, prefetch_threads=threads, **BASE), 100)
            assert feed_threads() == before


def test_bf16_shards_are_delivered_in_bf16_with_the_same_rows(tmp_path):
    x = labelled_acts()
    s32, s16 = LocalStore(tmp_path / "f32"), LocalStore(tmp_path / "b16")
    m32 = fake_harvest(s32, JOB, x, context_len=T, shard_tokens=64)
    m16 = fake_harvest(s16, JOB, x.bfloat16(), context_len=T, shard_tokens=64)
    m16["hooks"][HOOK]["sinks"] = m32["hooks"][HOOK]["sinks"]  # same norms and sink rule
    b32 = take(HarvestData(m32, HOOK, s32.get, **BASE), 20)
    b16 = take(HarvestData(m16, HOOK, s16.get, **BASE), 20)
    assert {b.acts.dtype for b in b16} == {torch.bfloat16}
    for a, b in zip(b32, b16, strict=True):
        assert torch.equal(a.acts.bfloat16(), b.acts)


def test_decode_shard_makes_views_over_the_bytes_equal_to_safetensors():
    tensors = {
        "acts": torch.randn(6, 4).bfloat16(),
        "positions": torch.arange(6, dtype=torch.int32),
        "norms": torch.rand(6),
        "empty": torch.zeros(0, 4),
    }
    data = write_shard_bytes(tensors, {"hook": HOOK})
    views = decode_shard(data, "k")
    buf = memoryview(data)
    start = torch.frombuffer(data, dtype=torch.uint8).data_ptr()
    for name, t in read_shard(data).items():
        assert torch.equal(views[name], t) and views[name].dtype == t.dtype
        if t.numel():  # zero-copy: the tensor's memory lies inside the bytes object
            assert start <= views[name].data_ptr() < start + len(buf)
    with pytest.raises(CorruptShard, match="'k'"):
        decode_shard(data[:-1], "k")


def test_a_resumed_run_with_prefetch_and_a_caching_reader_ends_with_the_same_weights(tmp_path):
    x, _ = planted_dictionary(n=16 * 1024, seed=2)
    x[::16] *= 200
    store = LocalStore(tmp_path / "store")
    manifest = fake_harvest(store, JOB, x, context_len=16, shard_tokens=1024, hook=HOOK)
    store_reads: list[str] = []
    reader_threads: set[str] = set()
    cached: dict[str, bytes] = {}
    lock = threading.Lock()

    def caching_read(key: str) -> bytes:  # a node cache's part: the store is read once per shard
        reader_threads.add(threading.current_thread().name)
        with lock:
            if key not in cached:
                store_reads.append(key)
                cached[key] = store.get(key)
            return cached[key]

    s = TrainSpec(
        activations=ActivationsRef(job_id=JOB, hook=HOOK),
        saes=[SaeConfig(architecture="topk", d_sae=64, k=3, dead_window_tokens=4096)],
        total_tokens=30_720,
        batch_size=256,
        checkpoint_every_tokens=5120,
        validation_tokens=2048,
        shuffle_tokens=4096,
    )
    feed = {"prefetch_threads": 3, "cache_bytes": 64 << 10}  # chunks assembled as they come, a small cache
    whole = train_from_harvest(s, manifest, caching_read, feed=feed)
    checkpoints: list[bytes] = []
    steps = itertools.count()
    before = feed_threads()
    with pytest.raises(Cancelled):
        train_from_harvest(
            s,
            manifest,
            caching_read,
            feed=feed,
            on_checkpoint=lambda st: checkpoints.append(st.to_bytes()),
            should_stop=lambda: next(steps) == 70,
        )
    assert feed_threads() == before  # the killed run's feed stopped with it
    resumed = train_from_harvest(s, manifest, caching_read, feed=feed, resume=TrainState.from_bytes(checkpoints[-1]))
    assert resumed.steps == whole.steps
    for key, a in whole.saes["sae0"].state_dict().items():
        assert torch.equal(a, resumed.saes["sae0"].state_dict()[key]), key
    assert sorted(store_reads) == sorted({s["key"] for s in manifest["hooks"][HOOK]["shards"]})
    assert any(name.startswith("saeq-feed-read") for name in reader_threads)  # prefetch was on


def cuda_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return "cuda:0"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "kw",
    [{"gpu_fraction": 0.5}, {"gpu_fraction": 0.0}, {"gpu_fraction": 0.0, "cache_bytes": 0}],
    ids=["gpu-resident", "host-resident-pinned", "uncached-pinned"],
)
def test_cuda_batches_equal_the_cpu_batches(harvest, kw):
    device = cuda_or_skip()
    store, manifest = harvest
    cpu = take(HarvestData(manifest, HOOK, store.get, **BASE), 45)
    before = feed_threads()
    data = HarvestData(manifest, HOOK, store.get, device=device, **BASE | kw)
    gpu = take(data, 45)
    assert {b.acts.device.type for b in gpu} == {"cuda"}
    assert data._on_gpu == (kw["gpu_fraction"] > 0)
    assert [ids(b.acts.cpu()) for b in gpu] == [ids(b.acts) for b in cpu]
    assert [b.position for b in gpu] == [b.position for b in cpu]
    assert feed_threads() == before


@pytest.mark.gpu
def test_a_resumed_cuda_run_ends_with_the_same_weights(tmp_path):
    device = cuda_or_skip()
    x, _ = planted_dictionary(n=8 * 1024, seed=2)
    store = LocalStore(tmp_path / "store")
    manifest = fake_harvest(store, JOB, x, context_len=16, shard_tokens=1024, hook=HOOK)
    s = TrainSpec(
        activations=ActivationsRef(job_id=JOB, hook=HOOK),
        saes=[SaeConfig(architecture="topk", d_sae=64, k=3)],
        total_tokens=20_480,
        batch_size=256,
        checkpoint_every_tokens=5120,
        validation_tokens=1024,
        shuffle_tokens=2048,
    )
    whole = train_from_harvest(s, manifest, store.get, device=device)
    checkpoints: list[bytes] = []
    steps = itertools.count()
    with pytest.raises(Cancelled):
        train_from_harvest(
            s,
            manifest,
            store.get,
            device=device,
            on_checkpoint=lambda st: checkpoints.append(st.to_bytes()),
            should_stop=lambda: next(steps) == 50,
        )
    resumed = train_from_harvest(s, manifest, store.get, device=device, resume=TrainState.from_bytes(checkpoints[-1]))
    for key, a in whole.saes["sae0"].state_dict().items():
        torch.testing.assert_close(a, resumed.saes["sae0"].state_dict()[key], rtol=1e-5, atol=1e-6, msg=key)
