"""Training batches from a harvest's shards: sinks left out, a held-out tail, a seekable shuffle.

The last `validation_tokens` of the harvest (whole contexts) are held out and never trained on.
The rest is read in epochs. Each epoch shuffles the shards (a partly held-out shard counts as
its training part), groups them in that order into chunks of at least `shuffle_tokens` tokens,
visits the chunks in order, and permutes the ordinary rows (sinks removed) of each chunk with a
generator seeded by (seed, epoch, chunk). Order is a pure function of the seed, so a
`DataPosition` (epoch, chunk, row) names a point of the stream: resuming there reads only the
chunk it falls in, and skips every earlier chunk without reading it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saeq.errors import InvalidSpec
from saeq.ml.shards import read_shard
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
    """(B, d_in) float32 activations of ordinary tokens."""
    position: DataPosition
    """Where the stream stands after this batch: resume there to get the next one."""


@dataclass(frozen=True)
class _Piece:
    """Rows [start, end) of one shard: all of it, or the part before the held-out tail."""

    key: str
    start: int
    end: int

    @property
    def n_tokens(self) -> int:
        return self.end - self.start


class HarvestData:
    """The activations one harvest stored at one hook point, as training batches and a held-out
    validation set (ordinary tokens only, unless `exclude_sinks` is False). `read(key) -> bytes`
    reads one shard: the worker builds it from the object store, so this module does no I/O."""

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
    ):
        entry = manifest.get("hooks", {}).get(hook)
        if entry is None:
            raise InvalidSpec(
                f"the harvest has no hook {hook!r}; it has {sorted(manifest.get('hooks', {}))}",
                field="spec.activations.hook",
            )
        self.get = read  # key -> shard bytes: the caller's store, a dict's lookup in tests
        self.hook, self.batch_size, self.seed = hook, batch_size, seed
        self.d_in = int(entry.get("d_model") or manifest["d_model"])
        self.context_len = int(manifest["context_len"])
        self.exclude_sinks = exclude_sinks
        self.median_norm = float(entry["sinks"]["median_norm"])
        self.norm_factor = float(norm_factor or entry["sinks"]["norm_factor"])
        self.cache_bytes = cache_bytes
        self._cache: dict[_Piece, Tensor] = {}
        self._sinks: dict[_Piece, SinkStats] = {}

        shards = sorted(entry["shards"], key=lambda s: s["index"])
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
            if at + n <= cut:
                self.train_pieces.append(_Piece(s["key"], 0, n))
            elif at >= cut:
                self.val_pieces.append(_Piece(s["key"], 0, n))
            else:
                self.train_pieces.append(_Piece(s["key"], 0, cut - at))
                self.val_pieces.append(_Piece(s["key"], cut - at, n))
            at += n
        self.n_train_rows = cut
        """Training tokens before the sink rule (sinks included)."""
        self.shuffle_tokens = shuffle_tokens

    # --- reading -----------------------------------------------------------------------------

    def _rows(self, piece: _Piece) -> Tensor:
        """(n, d_in) float32 ordinary rows of a piece, in shard order."""
        if piece in self._cache:
            return self._cache[piece]
        t = read_shard(self.get(piece.key))
        sl = slice(piece.start, piece.end)
        positions, norms = t["positions"][sl], t["norms"][sl]
        self._sinks[piece] = sink_stats(positions, norms, self.median_norm, self.norm_factor)
        acts = t["acts"][sl]
        if self.exclude_sinks:
            acts = acts[~sink_mask(positions, norms, self.median_norm, self.norm_factor)]
        rows = acts.to(torch.float32).contiguous()
        used = sum(r.numel() * 4 for r in self._cache.values())
        if used + rows.numel() * 4 <= self.cache_bytes:
            self._cache[piece] = rows
        return rows

    def validation(self) -> Tensor:
        """(N_val, d_in) float32: the held-out tokens (ordinary ones only by default)."""
        return torch.cat([self._rows(p) for p in self.val_pieces])

    def train_rows(self) -> Tensor:
        """(N_train, d_in) float32: every ordinary training token once, in harvest order."""
        return torch.cat([self._rows(p) for p in self.train_pieces])

    def sink_counts(self, which: str = "train") -> SinkStats:
        """What the sink rule removes from the training (or "validation") tokens."""
        pieces = self.train_pieces if which == "train" else self.val_pieces
        out = SinkStats(0, 0, 0, self.median_norm, self.norm_factor)  # no pieces: nothing removed
        for i, p in enumerate(pieces):
            if p not in self._sinks:
                self._rows(p)
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

    def _chunk_rows(self, epoch: int, index: int, pieces: list[_Piece]) -> Tensor:
        rows = torch.cat([self._rows(p) for p in pieces])  # (n, d_in)
        perm = torch.randperm(rows.shape[0], generator=_generator(self.seed, epoch, index))
        return rows[perm]

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[Batch]:
        """Batches of `batch_size` ordinary rows from `start` on, epoch after epoch, forever. A
        batch may span two chunks (or epochs); each batch carries the position after it."""
        epoch, chunk, row = start.epoch, start.chunk, start.row
        parts, have = [], 0
        while True:
            chunks = self.chunks(epoch)
            while chunk < len(chunks):
                rows = self._chunk_rows(epoch, chunk, chunks[chunk])
                while row < rows.shape[0]:
                    take = min(self.batch_size - have, rows.shape[0] - row)
                    parts.append(rows[row : row + take])
                    have, row = have + take, row + take
                    if have == self.batch_size:
                        pos = DataPosition(epoch, chunk, row)
                        if row == rows.shape[0]:  # name the next chunk: it needs no read now
                            pos = DataPosition(epoch, chunk + 1, 0)
                        yield Batch(torch.cat(parts) if len(parts) > 1 else parts[0], pos)
                        parts, have = [], 0
                chunk, row = chunk + 1, 0
            epoch, chunk = epoch + 1, 0


def _generator(*parts: int) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
