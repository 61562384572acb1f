"""Training batches from a harvest: sinks out and counted, a held-out tail, a seekable shuffle."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.ml.activations import DataPosition, HarvestData
from saeq.platform.store import LocalStore
from tests.saeq.conftest import fake_harvest

JOB = "c" * 32
HOOK = "blocks.1.hook_resid_post"
T, N, D = 16, 1024, 8  # context length, tokens, width: 16 shards of 64 tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def labelled_acts(n: int = N) -> torch.Tensor:
    """Row i carries i / n in column 0 (to tell rows apart); position-0 rows are 100x larger
    (attention sinks), and so are rows 37 and 500 (norm outliers)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g)
    x[:, 0] = torch.arange(n) / n
    x[::T, 1:] *= 100
    x[[37, 500], 1:] *= 100
    return x


def ids(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0] * N).long().tolist()


@pytest.fixture()
def harvest(tmp_path):
    store = LocalStore(tmp_path / "store")
    return store, fake_harvest(store, JOB, labelled_acts(), context_len=T, shard_tokens=64)


def data(harvest, **kw) -> HarvestData:
    store, manifest = harvest
    base: dict[str, Any] = {"batch_size": 50, "seed": 3, "shuffle_tokens": 192, "validation_tokens": 200}
    return HarvestData(manifest, HOOK, store.get, **base | kw)


def sinks() -> set[int]:
    return set(range(0, N, T)) | {37, 500}


def test_validation_is_the_held_out_tail_without_sinks(harvest):
    d = data(harvest)
    # 200 tokens round up to 13 whole contexts (208 tokens), taken from the end of the harvest.
    assert ids(d.validation()) == [i for i in range(N - 208, N) if i not in sinks()]
    assert d.sink_counts("validation").n_sinks == 13
    assert d.n_train_rows == N - 208


def test_an_epoch_visits_every_ordinary_training_row_once(harvest):
    d = data(harvest)
    n_train = N - 208 - len([i for i in sinks() if i < N - 208])
    rows = ids(torch.cat([b.acts for b in itertools.islice(d.batches(), n_train // 50)]))
    assert len(set(rows)) == len(rows) == n_train // 50 * 50
    assert not set(rows) & sinks()
    assert max(rows) < N - 208  # never a held-out token
    assert rows[:200] != sorted(rows[:200])  # shuffled across shards (documents)
    counts = d.sink_counts("train")
    assert (counts.n_position0, counts.n_outliers) == (51, 2)


def test_order_is_deterministic_and_each_epoch_differs(harvest):
    first = [ids(b.acts) for b in itertools.islice(data(harvest).batches(), 40)]
    again = [ids(b.acts) for b in itertools.islice(data(harvest).batches(), 40)]
    assert first == again
    other_seed = [ids(b.acts) for b in itertools.islice(data(harvest, seed=4).batches(), 40)]
    assert first != other_seed
    epochs = [b.position.epoch for b in itertools.islice(data(harvest).batches(), 40)]
    assert epochs[-1] >= 2  # 40 batches of 50 cover more than two epochs of ~760 rows
    per_epoch = {}
    for b, e in zip(first, epochs, strict=False):
        per_epoch.setdefault(e, []).extend(b)
    assert per_epoch[0][:100] != per_epoch[1][:100]


def test_resuming_at_a_position_gives_the_same_batches_and_skips_earlier_chunks(harvest):
    store, manifest = harvest
    full = list(itertools.islice(data(harvest).batches(), 30))
    reads = []
    counting = lambda key: reads.append(key) or store.get(key)
    resumed = HarvestData(  # one reader thread: reads happen in the order they are asked for
        manifest,
        HOOK,
        counting,
        batch_size=50,
        seed=3,
        shuffle_tokens=192,
        validation_tokens=200,
        cache_bytes=0,
        prefetch_threads=1,
    )
    at = full[19].position  # resume after batch 20
    assert at.epoch == 1
    rest = list(itertools.islice(resumed.batches(at), 10))
    assert [ids(b.acts) for b in rest] == [ids(b.acts) for b in full[20:30]]
    assert [b.position for b in rest] == [b.position for b in full[20:30]]
    # The first read is the chunk the position falls in: no earlier chunk was read.
    chunk = resumed.chunks(at.epoch)[at.chunk]
    assert reads[: len(chunk)] == [p.key for p in chunk]
    assert DataPosition.from_dict(at.to_dict()) == at


def test_sink_rule_can_be_turned_off_or_given_another_factor(harvest):
    everything = data(harvest, exclude_sinks=False)
    assert ids(everything.validation()) == list(range(N - 208, N))
    # With a factor no outlier exceeds, only position 0 counts as a sink.
    loose = data(harvest, norm_factor=1000.0)
    assert loose.sink_counts("train").n_outliers == 0
    assert 37 in set(ids(torch.cat([b.acts for b in itertools.islice(loose.batches(), 16)])))


def test_bad_requests_name_the_field(harvest):
    with pytest.raises(InvalidSpec) as e:
        data(harvest, validation_tokens=N)
    assert e.value.field == "spec.validation_tokens"
    store, manifest = harvest
    with pytest.raises(InvalidSpec) as e:
        HarvestData(manifest, "blocks.2.hook_resid_post", store.get, batch_size=8)
    assert e.value.field == "spec.activations.hook"
