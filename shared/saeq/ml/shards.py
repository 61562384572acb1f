"""The activation shard file: one safetensors file per hook point and shard index.

Tensors (N = n_contexts * context_len tokens; contexts are contiguous, in order):
  acts       (N, d_model)  the harvest's dtype (float32 or bfloat16)
  token_ids  (N,) int32    the token at each row, to show text around it
  doc_ids    (N,) int32    the corpus document it came from; -1 for BOS and separator tokens
  positions  (N,) int32    position inside its context, 0..context_len-1
  norms      (N,) float32  L2 norm of the fp32 activation (the sink rule reads it)
Metadata (strings): hook, shard index, context_len, model, and the shard's sink counts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from torch import Tensor

TENSOR_NAMES = ("acts", "token_ids", "doc_ids", "positions", "norms")


def write_shard_bytes(tensors: dict[str, Tensor], metadata: Mapping[str, object]) -> bytes:
    """Serialise one shard; metadata values are stored as strings. Same input, same bytes."""
    from safetensors.torch import save

    data = save({k: t.contiguous() for k, t in tensors.items()}, metadata={k: str(v) for k, v in metadata.items()})
    # safetensors writes the metadata in hash-map order, which changes from call to call; a
    # resumed harvest must write byte-identical shards, so rewrite the header with sorted keys.
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(header) > n:  # cannot happen for the same JSON re-encoded; keep the valid original
        return data
    return data[:8] + header.ljust(n) + data[8 + n :]


def read_shard(data: bytes) -> dict[str, Tensor]:
    from safetensors.torch import load

    return load(data)


def read_shard_metadata(data: bytes) -> dict[str, str]:
    """The metadata of a shard, read from its header without decoding the tensors."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
