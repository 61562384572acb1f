"""Online training: harvest and train fused, activations read from the model's forward pass as
training goes, nothing stored but the SAEs.

The stream is the harvest the spec's `activations` describe (saeq.jobs.harvest: same context
packing, same hook capture), cut into shards of one shuffle chunk each (`shuffle_tokens` rounded
up to whole contexts). Its first `validation_tokens` contexts (whole) are held out; the rest of the
stream, in order, is the training data: chunk 0 is the held-out shard's remainder plus the next
shard, chunk c the shard after. Sinks are removed with the rule of saeq.ml.sinks, its median norm
measured on shard 0 (as a harvest's), and the ordinary rows of each chunk permuted by a generator
seeded by (seed, chunk). Each token is seen once: no epochs; `total_tokens` ends the stream.

Resumable: a batch's position names (chunk, row), with the median norm and the sink counts of the
chunks before. A resumed run recomputes the held-out contexts and the current chunk, and skips
every earlier context by tokenising it (deterministic), without a forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saeq.errors import InvalidSpec, JobError
from saeq.jobs.harvest import Shard, harvest_activations
from saeq.jobs.train import TrainResult, TrainState, train_saes
from saeq.ml.activations import Batch, DataPosition
from saeq.ml.corpus import Document
from saeq.ml.models import LoadedModel
from saeq.ml.sinks import SinkStats, sink_mask, sink_stats
from saeq.specs import HarvestSpec, OnlineActivations, TrainSpec

_MAX_SHARD_TOKENS = 4_194_304  # HarvestSpec.shard_tokens' limit: a larger chunk spans several shards
_MAX_TOKENS = 10_000_000_000  # HarvestSpec.max_tokens' limit: the stream ends with total_tokens first


@dataclass(frozen=True)
class OnlinePosition(DataPosition):
    """A point of the online stream (epoch is always 0), with what resuming there cannot recompute
    cheaply: the sink rule's median norm and the sink counts of the chunks before `chunk`."""

    median_norm: float = math.nan
    tokens_before: int = 0
    position0_before: int = 0
    outliers_before: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> OnlinePosition:
        fields = ("tokens_before", "position0_before", "outliers_before")
        return cls(0, int(d["chunk"]), int(d["row"]), float(d["median_norm"]), *(int(d[f]) for f in fields))


def chunk_harvest(spec: TrainSpec) -> tuple[HarvestSpec, int]:
    """(the harvest whose shards the online stream reads, shards per shuffle chunk)."""
    a = _online(spec)
    T = a.context_len
    chunk_contexts = max(math.ceil(spec.shuffle_tokens / T), math.ceil(128 / T))  # a shard holds >= 128
    shard_contexts = min(chunk_contexts, _MAX_SHARD_TOKENS // T)
    harvest = HarvestSpec(
        model=a.model,
        corpus=a.corpus,
        hooks=[a.hook],
        max_tokens=_MAX_TOKENS,
        context_len=T,
        batch_size=a.batch_size,
        prepend_bos=a.prepend_bos,
        doc_separator=a.doc_separator,
        shard_tokens=shard_contexts * T,
        dtype="float32",
        sink_norm_factor=spec.sinks.norm_factor or a.sink_norm_factor,
        seed=a.seed,
    )
    return harvest, math.ceil(chunk_contexts / shard_contexts)


class OnlineData:
    """The held-out set and the training batches of one online train spec. `docs()` gives a fresh
    iterator over the corpus's documents each call (in the spec's order): every read starts at
    the first document and skips what it does not need by tokenising it."""

    def __init__(
        self,
        spec: TrainSpec,
        lm: LoadedModel,
        docs: Callable[[], Iterable[Document]],
        *,
        should_stop: Callable[[], bool] = lambda: False,
        **harvest_kw,
    ):
        self.spec, self.lm, self.hook = spec, lm, _online(spec).hook
        self.harvest, self.shards_per_chunk = chunk_harvest(spec)
        self.per_shard = self.harvest.shard_tokens // self.harvest.context_len
        self.n_val_contexts = math.ceil(spec.validation_tokens / self.harvest.context_len)
        self.norm_factor = self.harvest.sink_norm_factor
        self._docs, self._should_stop, self._harvest_kw = docs, should_stop, harvest_kw
        self.docs_read = 0
        """Documents taken from the corpus so far (the packer reads ahead: at most 64 too many)."""
        self.median_norm = math.nan
        self.validation_sinks: SinkStats | None = None
        self.train_sinks: SinkStats | None = None
        """Sink counts over the training chunks read (whole chunks), once batches() has begun."""
        self._val_rows: Tensor | None = None
        self._val_contexts: Tensor | None = None
        self._tail: Shard | None = None  # the last held-out shard, when training rows follow its cut
        self._tail_cut = 0

    def _shards(self, start_shard: int, median: float | None) -> Generator[Shard, None, None]:
        def counted() -> Iterator[Document]:
            for n, doc in enumerate(self._docs(), 1):
                self.docs_read = max(self.docs_read, n)
                yield doc

        medians = None if median is None else {self.hook: median}
        shards = harvest_activations(
            self.harvest,
            self.lm,
            counted(),
            start_shard=start_shard,
            median_norms=medians,
            should_stop=self._should_stop,
            **self._harvest_kw,
        )
        with _fields_of_activations():
            yield from shards

    def validation(self, median_norm: float | None = None) -> Tensor:
        """(N_val, d_in) float32: the ordinary tokens of the first `validation_tokens` contexts.
        `median_norm`: a checkpoint's (else shard 0's, measured here)."""
        if self._val_rows is not None:
            return self._val_rows
        n_val_shards = (self.n_val_contexts - 1) // self.per_shard + 1
        with contextlib.closing(self._shards(0, median_norm)) as stream:
            shards = list(itertools.islice(stream, n_val_shards))
        if sum(s.n_tokens for s in shards) < self.n_val_contexts * self.harvest.context_len:
            raise InvalidSpec(
                f"the corpus ends within the {self.spec.validation_tokens:,} held-out tokens: "
                "nothing is left to train on",
                field="spec.validation_tokens",
            )
        self.median_norm = shards[0].sinks[self.hook].median_norm
        # Rows of the last held-out shard that are held out; the rest begin chunk 0.
        self._tail_cut = (self.n_val_contexts - (n_val_shards - 1) * self.per_shard) * self.harvest.context_len
        parts = [self._ordinary(s, slice(0, s.n_tokens)) for s in shards[:-1]]
        parts.append(self._ordinary(shards[-1], slice(0, self._tail_cut)))
        if self._tail_cut < shards[-1].n_tokens:
            self._tail = shards[-1]
        self.validation_sinks = _merge([counts for _, counts in parts])
        self._val_rows = torch.cat([rows for rows, _ in parts])
        # Shards hold whole contexts from row 0, so held-out row i (sinks included) is in context
        # i // context_len: the unit the figures' intervals resample (saeq.ml.held_out).
        kept = [self._kept(s, slice(0, s.n_tokens)) for s in shards[:-1]] + [
            self._kept(shards[-1], slice(0, self._tail_cut))
        ]
        self._val_contexts = torch.cat(kept).nonzero().squeeze(1) // self.harvest.context_len
        return self._val_rows

    def validation_contexts(self) -> Tensor:
        """(N_val,) int64: the held-out context each row of `validation()` comes from."""
        if self._val_contexts is None:
            self.validation()
        assert self._val_contexts is not None
        return self._val_contexts

    def _kept(self, shard: Shard, rows: slice) -> Tensor:
        """(n,) bool: which of one shard's `rows` `_ordinary` keeps."""
        t = shard.tensors[self.hook]
        positions, norms = t["positions"][rows], t["norms"][rows]
        if not self.spec.sinks.exclude:
            return torch.ones(positions.shape[0], dtype=torch.bool)
        return ~sink_mask(positions, norms, self.median_norm, self.norm_factor)

    def _ordinary(self, shard: Shard, rows: slice) -> tuple[Tensor, SinkStats]:
        """(ordinary rows (n, d_in) float32, sink counts) of one shard's `rows`."""
        t = shard.tensors[self.hook]
        positions, norms, acts = t["positions"][rows], t["norms"][rows], t["acts"][rows]
        counts = sink_stats(positions, norms, self.median_norm, self.norm_factor)
        if self.spec.sinks.exclude:
            acts = acts[~sink_mask(positions, norms, self.median_norm, self.norm_factor)]
        return acts.to(torch.float32), counts

    def _chunks(self, start_chunk: int) -> Iterator[tuple[Tensor, SinkStats]]:
        """(ordinary rows in shard order, sink counts) of chunks `start_chunk, ...`."""
        first_shard = (self.n_val_contexts - 1) // self.per_shard + 1 + start_chunk * self.shards_per_chunk
        with contextlib.closing(self._shards(first_shard, self.median_norm)) as shards:
            for chunk in itertools.count(start_chunk):
                parts = []
                if chunk == 0 and self._tail is not None:
                    parts.append(self._ordinary(self._tail, slice(self._tail_cut, self._tail.n_tokens)))
                parts += [
                    self._ordinary(s, slice(0, s.n_tokens)) for s in itertools.islice(shards, self.shards_per_chunk)
                ]
                if not parts:
                    return
                yield torch.cat([rows for rows, _ in parts]), _merge([counts for _, counts in parts])

    def batches(self, start: OnlinePosition | None = None) -> Generator[Batch, None, None]:
        """Batches of `batch_size` ordinary rows from `start` on, until the corpus ends (the last
        incomplete batch dropped). Each carries the position after it."""
        if self._val_rows is None:
            self.validation(start.median_norm if start else None)
        start = start or OnlinePosition(median_norm=self.median_norm)
        before = SinkStats(
            start.tokens_before, start.position0_before, start.outliers_before, self.median_norm, self.norm_factor
        )
        self.train_sinks = before
        B, parts, have, row = self.spec.batch_size, [], 0, start.row
        for chunk, (rows, counts) in enumerate(self._chunks(start.chunk), start.chunk):
            after = before.merge(counts)
            self.train_sinks = after
            rows = rows[torch.randperm(rows.shape[0], generator=_generator(self.spec.seed, chunk))]
            while row < rows.shape[0]:
                take = min(B - have, rows.shape[0] - row)
                parts.append(rows[row : row + take])
                have, row = have + take, row + take
                if have == B:
                    end = row == rows.shape[0]  # name the next chunk: resuming there reads no rest
                    at = (chunk + 1, 0, after) if end else (chunk, row, before)
                    yield Batch(torch.cat(parts) if len(parts) > 1 else parts[0], self._position(*at))
                    parts, have = [], 0
            before, row = after, 0

    def _position(self, chunk: int, row: int, before: SinkStats) -> OnlinePosition:
        return OnlinePosition(0, chunk, row, self.median_norm, before.n_tokens, before.n_position0, before.n_outliers)


def train_online(
    spec: TrainSpec,
    lm: LoadedModel,
    docs: Callable[[], Iterable[Document]],
    *,
    device: str = "cpu",
    resume: TrainState | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    **kw,
) -> TrainResult:
    """`train_saes` on activations read from `lm` as it goes (see the module docstring), with the
    held-out tokens measured, and the sink rule and its counts in `result.data`. `docs()` returns
    a fresh document iterator each call. Keyword arguments go to train_saes (on_progress,
    on_checkpoint, ...)."""
    data = OnlineData(spec, lm, docs, should_stop=should_stop)
    start = OnlinePosition.from_dict(resume.data_position) if resume and resume.data_position else None
    validation = data.validation(start.median_norm if start else None)
    # Closed on the way out, so the harvest's hooks leave the (cached) model at once.
    with contextlib.closing(data.batches(start)) as batches:
        result = train_saes(
            spec,
            batches,
            validation=validation,
            validation_contexts=data.validation_contexts(),
            device=device,
            resume=resume,
            should_stop=should_stop,
            **kw,
        )
    train_sinks, val_sinks = data.train_sinks, data.validation_sinks
    assert train_sinks is not None and val_sinks is not None  # batches() ran, after validation()
    excluded = spec.sinks.exclude
    for m in result.metrics.values():
        m.sinks_excluded_train = train_sinks.n_sinks if excluded else 0
        m.sinks_excluded_validation = val_sinks.n_sinks if excluded else 0
    result.data = {
        "source": "online",
        "hook": data.hook,
        "epochs": 1 if result.tokens else 0,
        "contexts_held_out": data.n_val_contexts,
        "validation_tokens": val_sinks.n_tokens - (val_sinks.n_sinks if excluded else 0),
        "docs_read": data.docs_read,
        "sinks_excluded": excluded,
        "sinks": {"train": train_sinks.to_dict(), "validation": val_sinks.to_dict()},
    }
    return result


def _online(spec: TrainSpec) -> OnlineActivations:
    if not isinstance(spec.activations, OnlineActivations):
        raise TypeError("an online train job reads OnlineActivations, not a harvest")
    return spec.activations


def _merge(counts: list[SinkStats]) -> SinkStats:
    out = counts[0]
    for c in counts[1:]:
        out = out.merge(c)
    return out


@contextlib.contextmanager
def _fields_of_activations():
    """The harvest's errors name its spec's fields; ours live under `spec.activations`."""
    try:
        yield
    except JobError as e:
        if e.field is None or not e.field.startswith("spec."):
            raise
        field = e.field.removeprefix("spec.")
        field = "hook" if field.startswith("hooks") else field
        raise type(e)(e.message, field=f"spec.activations.{field}") from e


def _generator(seed: int, chunk: int) -> torch.Generator:
    """Chunk `chunk`'s permutation, a pure function of (seed, chunk) (as saeq.ml.activations')."""
    digest = hashlib.sha256(f"{seed}/online/{chunk}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
