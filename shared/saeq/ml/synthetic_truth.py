"""A synthetic harvest's data and its ground truth: the generator (saeq.ml.synthetic) rebuilt from
its parameters, each shard's rows drawn from their own seeded stream (so shard k is the same bytes
on every attempt), the true features stored once beside the shards, and held-out rows with their
true codes drawn from another stream of the same generator for scoring SAEs against the truth."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from saeq.ml.shards import read_shard_metadata
from saeq.ml.synthetic import SyntheticBatch, SyntheticConfig, SyntheticModel

TRUTH_FORMAT = "saeq.synthetic-truth/1"
DRAW_ELEMENTS = 1 << 22
"""Rows are drawn in chunks of DRAW_ELEMENTS // n_features (the dense (rows, n_features) codes of a
chunk stay near 16 MB); a pure function of the generator, so a shard's bytes never depend on memory."""


def generator_model(params: dict) -> SyntheticModel:
    """The generator a spec's `synthetic` (or a stored truth's parameters) describes."""
    return SyntheticModel(SyntheticConfig(**params))


def stream_seed(seed: int, part: str) -> int:
    """The seed of one part of a harvest's token stream (`shard-<k>`, `heldout`): independent
    streams from one spec seed, each below 2**56 (torch takes < 2**63)."""
    return int.from_bytes(hashlib.sha256(f"saeq.synthetic/{seed}/{part}".encode()).digest()[:7], "big")


def draw_rows(model: SyntheticModel, seed: int, n_rows: int) -> Iterator[SyntheticBatch]:
    """`n_rows` tokens of the stream `seed`, in chunks of the generator's draw size."""
    g = torch.Generator().manual_seed(seed)
    per_draw = max(1, DRAW_ELEMENTS // model.cfg.n_features)
    for start in range(0, n_rows, per_draw):
        yield model.sample(min(per_draw, n_rows - start), g)


def shard_acts(model: SyntheticModel, seed: int, index: int, n_rows: int, check: Callable[[], None]) -> Tensor:
    """Shard `index`'s activations (n_rows, d_model), float32; `check()` runs between draws (it
    raises to stop)."""
    parts = []
    for batch in draw_rows(model, stream_seed(seed, f"shard-{index}"), n_rows):
        parts.append(batch.acts_BD)
        check()
    return torch.cat(parts)


def heldout_batches(model: SyntheticModel, seed: int, n_rows: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(acts_BD, codes_BF) of held-out rows: a stream no shard of the harvest of `seed` draws from."""
    for batch in draw_rows(model, stream_seed(seed, "heldout"), n_rows):
        yield batch.acts_BD, batch.codes_BF


@dataclass(frozen=True)
class SyntheticTruth:
    """What a synthetic harvest stores of its generator."""

    features_FD: Tensor
    """The true unit features."""
    firing_probs_F: Tensor
    generator: dict
    """SyntheticConfig's fields: enough to rebuild the generator."""
    seed: int
    """The harvest's stream seed (its held-out stream is stream_seed(seed, "heldout"))."""

    def model(self) -> SyntheticModel | None:
        """The generator rebuilt, or None when today's saeq.ml.synthetic no longer makes these
        features from these parameters (held-out rows would not follow the truth)."""
        model = generator_model(self.generator)
        return model if torch.equal(model.features_FD, self.features_FD) else None


def truth_bytes(model: SyntheticModel, seed: int) -> bytes:
    """The stored truth: features, firing probabilities, hierarchies and groups, and the parameters."""
    tensors = {
        "features_FD": model.features_FD.contiguous(),
        "firing_probs_F": model.firing_probs_F.contiguous(),
        "parents_H": model.parents_H.contiguous(),
        "children_HC": model.children_HC.contiguous(),
        "groups_GS": model.groups_GS.contiguous(),
    }
    metadata = {"format": TRUTH_FORMAT, "generator": json.dumps(asdict(model.cfg), sort_keys=True), "seed": str(seed)}
    return save_safetensors(tensors, metadata)


def read_truth(data: bytes) -> SyntheticTruth:
    """The stored truth back (ValueError when `data` is not one)."""
    metadata = read_shard_metadata(data)  # a safetensors header, as a shard's
    if metadata.get("format") != TRUTH_FORMAT:
        raise ValueError(f"not a synthetic truth file (format {metadata.get('format')!r})")
    tensors = load_safetensors(data)
    generator = json.loads(metadata["generator"])
    return SyntheticTruth(tensors["features_FD"], tensors["firing_probs_F"], generator, int(metadata["seed"]))
