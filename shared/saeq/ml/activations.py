"""Training batches from a harvest's shards: sinks left out, a held-out tail, a seekable shuffle.

The last `validation_tokens` of the harvest (whole contexts) are held out and never trained on.
The rest is read in epochs. Each epoch shuffles the shards (a partly held-out shard counts as
its training part), groups them in that order into chunks of at least `shuffle_tokens` tokens,
visits the chunks in order, and permutes the ordinary rows (sinks removed) of each chunk with a
generator seeded by (seed, epoch, chunk). Order is a pure function of the seed, so a
`DataPosition` (epoch, chunk, row) names a point of the stream: resuming there reads only the
chunk it falls in (and those after it), and skips every earlier chunk without reading it.

How rows move: a shard is decoded without copying (saeq.ml.shards.decode_shard) and its rows stay
there, in their stored dtype, never copied to make a chunk. The shuffle is a permutation of row
indices: a batch takes the next `batch_size` of them, sorted (a batch is a set: the trainer's step
does not depend on the order of its rows, and sorted reads are sequential) and gathered with one
index_select per piece they fall in. Decoded pieces stay resident within `cache_bytes`; on CUDA,
when every training row fits a fraction of free GPU memory, they are uploaded once instead and a
batch is gathered on the GPU (GPU-resident). Reads run on `prefetch_threads` threads up to
`prefetch_chunks` / `prefetch_bytes` ahead; batches are gathered on a background thread (saeq.ml.feed).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saeq.errors import InvalidSpec
from saeq.ml.feed import ChunkLoad, Gather, Part, Stopped, background, wait
from saeq.ml.shards import CorruptShard, decode_shard
from saeq.ml.sinks import SinkStats, sink_mask, sink_stats


@dataclass(frozen=True)
class DataPosition:
    """A point of the training stream: `row` ordinary rows of chunk `chunk` (in the order of
    epoch `epoch`) are consumed."""

    epoch: int = 0
    chunk: int = 0
    row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataPosition:
        return cls(int(d["epoch"]), int(d["chunk"]), int(d["row"]))


class Batch(NamedTuple):
    acts: Tensor
    """(B, d_in) activations of ordinary tokens in the harvest's STORED dtype (float32 or
    bfloat16), on the feed's device: the trainer casts (`.to(device, torch.float32)`)."""
    position: DataPosition
    """Where the stream stands after this batch: resume there to get the next one."""


@dataclass(frozen=True)
class _Piece:
    """Rows [start, end) of one shard: all of it, or the part before the held-out tail."""

    key: str
    start: int
    end: int
    target_key: str | None = None
    """The same shard index at the target hook (transcoders' pairs): its rows go beside these."""
    more_keys: tuple[str, ...] = ()
    """The same shard index at each of `more_hooks` (crosscoders' layers), beside these in order."""

    @property
    def n_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class _Decoded:
    """One piece as decoded: its rows, views over the shard's bytes."""

    acts: Tensor
    """(n, d_in) stored dtype."""
    ordinary: Tensor
    """(m,) int64: the rows of `acts` the sink rule keeps (all of them when sinks are kept)."""
    nbytes: int
    """Bytes these views keep alive (the whole shard)."""


class _Chunk(NamedTuple):
    sources: list[Tensor]
    """Each piece's (n_i, d_in) rows, in the chunk's piece order (views, or GPU copies)."""
    bounds: Tensor
    """(n_pieces + 1,) int64: where each piece starts in the chunk's rows laid end to end."""
    rows: Tensor
    """(m,) int64: the chunk's ordinary rows in that layout, in harvest order (before the shuffle)."""


class HarvestData:
    """The activations one harvest stored at one hook point, as training batches and a held-out
    validation set (ordinary tokens only, unless `exclude_sinks` is False). `read(key) -> bytes`
    reads one shard, possibly from several threads at once: the worker builds it from the object
    store, so this module does no I/O. `prefetch_threads=0` reads on the consumer's thread.

    With `target_hook` (transcoders), each row is [hook | target_hook] of one token: the two
    hooks' shards of one index hold the same tokens in the same order; the sink rule is the input
    hook's. With `more_hooks` (crosscoders), each row is [hook | more_hooks[0] | ...] likewise."""

    def __init__(
        self,
        manifest: dict,
        hook: str,
        read: Callable[[str], bytes],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_tokens: int = 65_536,
        validation_tokens: int = 16_384,
        exclude_sinks: bool = True,
        norm_factor: float | None = None,
        cache_bytes: int = 2 << 30,
        device: str = "cpu",
        prefetch_threads: int = 4,
        prefetch_bytes: int = 512 << 20,
        prefetch_chunks: int = 4,
        queue_batches: int = 4,
        gpu_fraction: float = 0.5,
        target_hook: str | None = None,
        more_hooks: tuple[str, ...] = (),
    ):
        entry = _hook_entry(manifest, hook, "spec.activations.hook")
        self.get = read  # key -> shard bytes: the caller's store, a dict's lookup in tests
        self.hook, self.batch_size, self.seed = hook, batch_size, seed
        self.d_hook = int(entry.get("d_model") or manifest["d_model"])
        """Width of the input hook's rows."""
        self.target_hook = target_hook
        self.d_in = self.d_hook + self._target_width(manifest, target_hook)
        """Width of a batch's rows: the input hook's, plus the target hook's when pairing."""
        self.more_hooks = tuple(more_hooks)
        self.d_in += sum(self._layer_width(manifest, h) for h in self.more_hooks)  # and each further layer's
        self.context_len = int(manifest["context_len"])
        self.exclude_sinks = exclude_sinks
        self.median_norm = float(entry["sinks"]["median_norm"])
        self.norm_factor = float(norm_factor or entry["sinks"]["norm_factor"])
        self.cache_bytes, self.device = cache_bytes, torch.device(device)
        self.prefetch_threads, self.prefetch_bytes, self.queue_batches = prefetch_threads, prefetch_bytes, queue_batches
        self.gpu_fraction, self.prefetch_chunks = gpu_fraction, prefetch_chunks
        self._sinks: dict[_Piece, SinkStats] = {}
        self._lock = threading.Lock()
        self._reading: dict[_Piece, Future] = {}  # pieces a reader is decoding now: one read each
        self._dtype: torch.dtype | None = None  # the stored dtype, known at the first decode
        self._on_gpu = False  # GPU-resident: pieces are uploaded, and all of them fit
        self._cache: dict[_Piece, _Decoded] = {}  # resident pieces, within cache_bytes (or the GPU's room)
        self._cached_bytes = 0
        self._val_contexts: Tensor | None = None  # set by validation()

        shards = sorted(entry["shards"], key=lambda s: s["index"])
        targets = _target_keys(manifest, target_hook, shards)
        layers = [_target_keys(manifest, h, shards, "spec.activations.hooks") for h in self.more_hooks]
        total = sum(int(s["n_tokens"]) for s in shards)
        n_val = -(-validation_tokens // self.context_len) * self.context_len  # whole contexts
        if n_val >= total:
            raise InvalidSpec(
                f"validation_tokens={validation_tokens} leaves nothing to train on: the harvest holds {total} tokens",
                field="spec.validation_tokens",
            )
        self.train_pieces, self.val_pieces = [], []
        cut, at = total - n_val, 0
        for s in shards:
            n = int(s["n_tokens"])
            t = targets.get(s["index"])
            more = tuple(keys[s["index"]] for keys in layers)
            if at + n <= cut:
                self.train_pieces.append(_Piece(s["key"], 0, n, t, more))
            elif at >= cut:
                self.val_pieces.append(_Piece(s["key"], 0, n, t, more))
            else:
                self.train_pieces.append(_Piece(s["key"], 0, cut - at, t, more))
                self.val_pieces.append(_Piece(s["key"], cut - at, n, t, more))
            at += n
        self.n_train_rows = cut
        """Training tokens before the sink rule (sinks included)."""
        self.shuffle_tokens = shuffle_tokens

    def _target_width(self, manifest: dict, target_hook: str | None) -> int:
        if target_hook is None:
            return 0
        d_target = int(_hook_entry(manifest, target_hook, "spec.activations.target_hook").get("d_model") or 0)
        d_target = d_target or int(manifest["d_model"])
        if d_target != self.d_hook:
            raise InvalidSpec(
                f"target_hook {target_hook!r} is {d_target} wide, the input hook {self.hook!r} {self.d_hook}:"
                " a transcoder pairs hooks of one width",
                field="spec.activations.target_hook",
            )
        return d_target

    def _layer_width(self, manifest: dict, hook: str) -> int:
        d = int(_hook_entry(manifest, hook, "spec.activations.hooks").get("d_model") or manifest["d_model"])
        if d != self.d_hook:
            raise InvalidSpec(
                f"hook {hook!r} is {d} wide, {self.hook!r} {self.d_hook}: a crosscoder reads hooks of one width",
                field="spec.activations.hooks",
            )
        return d

    # --- reading -----------------------------------------------------------------------------

    def _decode(self, piece: _Piece) -> _Decoded:
        """Read and decode one piece (no copy), recording what the sink rule removes from it."""
        data = self.get(piece.key)
        t = decode_shard(data, piece.key)
        acts = _shard_acts(t, piece.key, piece.end, self.d_hook)
        sl = slice(piece.start, piece.end)
        if piece.target_key is not None:  # the same tokens at the target hook, beside the input's
            target_data = self.get(piece.target_key)
            target = _shard_acts(decode_shard(target_data, piece.target_key), piece.target_key, piece.end, self.d_hook)
            acts = torch.cat([acts[sl], target[sl]], dim=1)  # (n, d_hook + d_target)
            sl_acts, extra = slice(None), len(target_data)
        else:
            sl_acts, extra = sl, 0
        if piece.more_keys:  # the same tokens at each further layer, beside the first's
            more = [(self.get(k), k) for k in piece.more_keys]
            layers = [_shard_acts(decode_shard(d, k), k, piece.end, self.d_hook)[sl] for d, k in more]
            acts = torch.cat([acts[sl_acts], *layers], dim=1)  # (n, L * d_hook)
            sl_acts, extra = slice(None), extra + sum(len(d) for d, _ in more)
        positions, norms = t["positions"][sl], t["norms"][sl]
        self._sinks[piece] = sink_stats(positions, norms, self.median_norm, self.norm_factor)
        if self.exclude_sinks:
            ordinary = (~sink_mask(positions, norms, self.median_norm, self.norm_factor)).nonzero().squeeze(1)
        else:
            ordinary = torch.arange(piece.n_tokens)
        return _Decoded(acts[sl_acts], ordinary, len(data) + extra)

    def _settle_layout(self, dtype: torch.dtype, key: str) -> None:
        """At the first decode: GPU-resident when a CUDA target has room for every training row."""
        with self._lock:
            if self._dtype is not None:
                if dtype != self._dtype:
                    raise CorruptShard(f"shard {key!r} holds {dtype} activations, the harvest's others {self._dtype}")
                return
            self._dtype = dtype
            n_bytes = self.n_train_rows * self.d_in * dtype.itemsize
            if self.device.type == "cuda":
                self._on_gpu = n_bytes <= self.gpu_fraction * torch.cuda.mem_get_info(self.device)[0]

    def _resident(self, piece: _Piece) -> bool:
        return piece in self._cache

    def _make_resident(self, piece: _Piece) -> _Decoded:
        """A piece decoded (uploaded when GPU-resident), kept if there is room. Two chunks' loads
        may ask for one piece at once (at an epoch's turn the next epoch's first chunk is
        prefetched while this epoch's last still loads it): the second waits for the first's read
        instead of reading the shard again."""
        with self._lock:
            if piece in self._cache:
                return self._cache[piece]
            reading = self._reading.get(piece)
            if reading is None:
                reading = self._reading[piece] = Future()
                mine = True
            else:
                mine = False
        if not mine:  # the reader that registered it is running now, in another thread
            return reading.result()
        try:
            decoded = self._decode(piece)
            self._settle_layout(decoded.acts.dtype, piece.key)
            if self._on_gpu:
                acts = decoded.acts.to(self.device)
                torch.cuda.current_stream(self.device).synchronize()  # a pageable copy may still be in flight
                decoded = _Decoded(acts, decoded.ordinary, acts.nbytes)
            with self._lock:
                if self._on_gpu or self._cached_bytes + decoded.nbytes <= self.cache_bytes:
                    self._cache[piece] = decoded
                    self._cached_bytes += decoded.nbytes
                del self._reading[piece]
            reading.set_result(decoded)
            return decoded
        except BaseException as e:
            with self._lock:
                self._reading.pop(piece, None)
            reading.set_exception(e)
            raise

    def _assemble(self, pieces: list[_Piece], decoded: list[_Decoded | None]) -> _Chunk:
        """A chunk: its pieces' rows as they are, and its ordinary rows' indices, in piece order."""
        ds = [d if d is not None else self._cache[p] for p, d in zip(pieces, decoded, strict=True)]
        bounds, rows = [0], []
        for d in ds:
            rows.append(bounds[-1] + d.ordinary)
            bounds.append(bounds[-1] + d.acts.shape[0])
        ordinary = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        return _Chunk([d.acts for d in ds], torch.tensor(bounds), ordinary)

    def _load(self, pieces: list[_Piece], submit: Callable[[Callable[[], None]], object]) -> Future:
        """-> Future of the chunk made of `pieces`; missing pieces are read by `submit`ted tasks."""
        todo = [i for i, p in enumerate(pieces) if not self._resident(p)]
        load = ChunkLoad(len(todo), lambda values: self._assemble(pieces, self._place(pieces, todo, values)))
        for j, i in enumerate(todo):
            submit(lambda j=j, i=i: load.run(j, lambda: self._make_resident(pieces[i])))
        return load.future

    @staticmethod
    def _place(pieces: list[_Piece], todo: list[int], values: list) -> list[_Decoded | None]:
        decoded: list[_Decoded | None] = [None] * len(pieces)
        for i, v in zip(todo, values, strict=True):
            decoded[i] = v
        return decoded

    @property
    def resident_bytes(self) -> int:
        """Bytes the feed keeps between chunks: the resident pieces' shards (GPU copies' acts)."""
        return self._cached_bytes

    def _float_rows(self, pieces: list[_Piece]) -> Tensor:
        parts = [d.acts.index_select(0, d.ordinary).float() for d in map(self._decode, pieces)]
        return torch.cat(parts) if parts else torch.zeros(0, self.d_in)

    def validation(self) -> Tensor:
        """(N_val, d_in) float32: the held-out tokens (ordinary ones only by default)."""
        decoded = [self._decode(p) for p in self.val_pieces]
        # Every shard holds whole contexts, and the tail held out is whole contexts, so the held-out
        # row at offset i (sinks included) belongs to held-out context i // context_len.
        contexts, at = [torch.zeros(0, dtype=torch.long)], 0
        for p, d in zip(self.val_pieces, decoded, strict=True):
            contexts.append((at + d.ordinary) // self.context_len)
            at += p.n_tokens
        self._val_contexts = torch.cat(contexts)
        parts = [d.acts.index_select(0, d.ordinary).float() for d in decoded]
        return torch.cat(parts) if parts else torch.zeros(0, self.d_in)

    def validation_contexts(self) -> Tensor:
        """(N_val,) int64: the held-out context each row of `validation()` comes from, the unit
        its figures' intervals resample (saeq.ml.held_out)."""
        if self._val_contexts is None:
            self.validation()
        assert self._val_contexts is not None
        return self._val_contexts

    def train_rows(self) -> Tensor:
        """(N_train, d_in) float32: every ordinary training token once, in harvest order."""
        return self._float_rows(self.train_pieces)

    def sink_counts(self, which: str = "train") -> SinkStats:
        """What the sink rule removes from the training (or "validation") tokens."""
        pieces = self.train_pieces if which == "train" else self.val_pieces
        out = SinkStats(0, 0, 0, self.median_norm, self.norm_factor)  # no pieces: nothing removed
        for i, p in enumerate(pieces):
            if p not in self._sinks:
                self._decode(p)
            out = self._sinks[p] if i == 0 else out.merge(self._sinks[p])
        return out

    # --- order -------------------------------------------------------------------------------

    def chunks(self, epoch: int) -> list[list[_Piece]]:
        """Epoch `epoch`'s chunks, in the order they are read."""
        order = torch.randperm(len(self.train_pieces), generator=_generator(self.seed, epoch))
        chunks, current, n = [], [], 0
        for i in order.tolist():
            current.append(self.train_pieces[i])
            n += self.train_pieces[i].n_tokens
            if n >= self.shuffle_tokens:
                chunks.append(current)
                current, n = [], 0
        if current:
            chunks.append(current)
        return chunks

    def _ahead(self, start: DataPosition, submit, stop: threading.Event | None) -> Iterator[tuple[int, int, _Chunk]]:
        """(epoch, chunk index, chunk) from `start` on, forever, each chunk's reads started while
        the chunks loading ahead of the consumer are fewer than `prefetch_chunks` and hold at most
        `prefetch_bytes` (one is always loading)."""
        loading: deque[tuple[int, int, Future, int]] = deque()
        in_flight = 0

        def upcoming() -> Iterator[tuple[int, int, list[_Piece]]]:
            epoch, index = start.epoch, start.chunk
            while True:
                chunks = self.chunks(epoch)
                for i in range(index, len(chunks)):
                    yield epoch, i, chunks[i]
                epoch, index = epoch + 1, 0

        plan = upcoming()
        nxt = next(plan)
        while True:
            while True:
                itemsize = 4 if self._dtype is None else self._dtype.itemsize
                cost = sum(p.n_tokens for p in nxt[2]) * self.d_in * itemsize
                if loading and (len(loading) >= self.prefetch_chunks or in_flight + cost > self.prefetch_bytes):
                    break
                loading.append((nxt[0], nxt[1], self._load(nxt[2], submit), cost))
                in_flight += cost
                nxt = next(plan)
            epoch, index, future, cost = loading.popleft()
            in_flight -= cost
            yield epoch, index, wait(future, stop)

    def _produce(self, start: DataPosition, submit, stop: threading.Event | None, gather: Gather) -> Iterator:
        """(batch, its CUDA event or None, position after it) from `start` on, forever."""
        parts: list[Part] = []
        have, row = 0, start.row
        for epoch, index, chunk in self._ahead(start, submit, stop):
            perm = torch.randperm(chunk.rows.shape[0], generator=_generator(self.seed, epoch, index))
            order = chunk.rows[perm]  # (m,) the chunk's shuffled rows, on the host (Gather moves them)
            n = order.shape[0]
            while row < n:
                take = min(self.batch_size - have, n - row)
                parts.append((chunk.sources, chunk.bounds, order[row : row + take]))
                have, row = have + take, row + take
                if have == self.batch_size:
                    # a batch that ends a chunk names the next chunk: resuming needs no read of this one
                    pos = DataPosition(epoch, index, row) if row < n else DataPosition(epoch, index + 1, 0)
                    acts, event = gather(parts)
                    yield acts, event, pos
                    parts, have = [], 0
            row = 0

    def batches(self, start: DataPosition = DataPosition()) -> Generator[Batch, None, None]:
        """Batches of `batch_size` ordinary rows from `start` on, epoch after epoch, forever. A
        batch may span two chunks (or epochs); each batch carries the position after it. Close
        the generator (or drop it) to stop the feed's threads."""
        gather = Gather(self.device, self.batch_size)
        if self.prefetch_threads == 0:
            items: Iterator = self._produce(start, lambda task: task(), None, gather)
        else:
            items = background(
                lambda stop: self._threaded(start, stop, gather), maxsize=self.queue_batches, name="saeq-feed"
            )
        try:
            for acts, event, pos in items:
                yield Batch(gather.handover(acts, event), pos)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _threaded(self, start: DataPosition, stop: threading.Event, gather: Gather) -> Iterator:
        pool = ThreadPoolExecutor(self.prefetch_threads, thread_name_prefix="saeq-feed-read")
        try:
            if gather.stream is not None:  # the producer's CUDA work goes on the gather's side stream
                with torch.cuda.stream(gather.stream):
                    yield from self._produce(start, pool.submit, stop, gather)
            else:
                yield from self._produce(start, pool.submit, stop, gather)
        except Stopped:
            return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _hook_entry(manifest: dict, hook: str, field: str) -> dict:
    entry = manifest.get("hooks", {}).get(hook)
    if entry is None:
        raise InvalidSpec(f"the harvest has no hook {hook!r}; it has {sorted(manifest.get('hooks', {}))}", field=field)
    return entry


def _target_keys(
    manifest: dict, target_hook: str | None, shards: list[dict], field: str = "spec.activations.target_hook"
) -> dict[int, str]:
    """Shard index -> the target hook's shard key, each holding the input shard's tokens."""
    if target_hook is None:
        return {}
    by_index = {s["index"]: s for s in manifest["hooks"][target_hook]["shards"]}
    out = {}
    for s in shards:
        t = by_index.get(s["index"])
        if t is None or int(t["n_tokens"]) != int(s["n_tokens"]):
            raise InvalidSpec(
                f"{field.rsplit('.', 1)[-1]} {target_hook!r} has no shard {s['index']} of {s['n_tokens']} tokens beside the input's",
                field=field,
            )
        out[s["index"]] = t["key"]
    return out


def _shard_acts(t: dict[str, Tensor], key: str, n_rows: int, d: int) -> Tensor:
    """A decoded shard's (n, d) activations, once checked: CorruptShard naming the shard otherwise."""
    missing = {"acts", "positions", "norms"} - set(t)
    acts = t.get("acts")
    if missing or acts is None or acts.dim() != 2 or acts.shape[1] != d or acts.shape[0] < n_rows:
        shape = None if acts is None else list(acts.shape)
        raise CorruptShard(
            f"shard {key!r} is not a harvest shard of {n_rows} x {d} activations (acts {shape}, missing {sorted(missing)})"
        )
    return acts


def _generator(*parts: int) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
