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
import math
import struct
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from saeq.errors import StoreError

TENSOR_NAMES = ("acts", "token_ids", "doc_ids", "positions", "norms")

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors' dtype names -> torch dtypes (those a shard can hold)."""

# decode_shard's tensors are views over the immutable bytes a store returned; saeq never writes
# to them, so torch's warning that such a buffer is not writable says nothing useful. torch gives
# it once per process: spend that once here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.frombuffer(b"\0", dtype=torch.uint8)


class CorruptShard(StoreError):
    """A shard's bytes are not a valid safetensors file (truncated, bad header, offsets out of range)."""


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
    """The shard's tensors, copied out of `data` (safetensors' own decoder)."""
    from safetensors.torch import load

    return load(data)


def decode_shard(data: bytes | bytearray | memoryview, key: str = "<shard>") -> dict[str, Tensor]:
    """The shard's tensors as views over `data`, without copying it (torch.frombuffer; the
    tensors keep `data` alive and must not be written to). Raises CorruptShard naming `key` when
    the bytes are short or the header does not describe them."""
    size = len(data)
    if size < 8:
        raise CorruptShard(f"shard {key!r} is corrupt: {size} bytes, shorter than its 8-byte header length")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if 8 + header_len > size:
        raise CorruptShard(f"shard {key!r} is corrupt: its header says {header_len} bytes, the file holds {size}")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptShard(f"shard {key!r} is corrupt: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CorruptShard(f"shard {key!r} is corrupt: its header is not a JSON object")
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            tensors[name] = _view(data, base, name, info, key)
    return tensors


def _view(data: bytes | bytearray | memoryview, base: int, name: str, info: object, key: str) -> Tensor:
    """Tensor `name` of a shard's header entry `info`, as a view over `data`."""
    malformed = CorruptShard(f"shard {key!r} is corrupt: tensor {name!r} has a malformed header entry")
    if not isinstance(info, dict):
        raise malformed
    try:
        dtype = _DTYPES[info["dtype"]]
        shape = [int(n) for n in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise malformed from None
    count = math.prod(shape)
    if min(shape, default=0) < 0 or begin < 0 or end - begin != count * dtype.itemsize or base + end > len(data):
        raise CorruptShard(
            f"shard {key!r} is corrupt: tensor {name!r} ({info['dtype']} {shape}) at bytes [{begin}, {end}) "
            f"does not fit the {len(data) - base} data bytes"
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype, count=count, offset=base + begin).view(shape)


def read_shard_metadata(data: bytes) -> dict[str, str]:
    """The metadata of a shard, read from its header without decoding the tensors."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
