"""What a deployment lets a spec name: LLM endpoints from its `llm_endpoints` allow-list and local
paths under its `local_path_roots`. The API checks at submit, the worker again before it loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pydantic import BaseModel

from saeq.config import LlmEndpoint
from saeq.errors import InvalidSpec
from saeq.specs import EndpointLLM, ImportedSae, ModelSpec


def spec_values(value: Any, field: str = "spec") -> Iterator[tuple[str, Any]]:
    """Every model nested in a spec with its dotted field (`spec.explainers.1`), the spec first."""
    yield field, value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from spec_values(getattr(value, name), f"{field}.{name}")
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], BaseModel):
        # Lists of plain values (feature ids, prompts) hold no model: not walked, they can be long.
        for i, item in enumerate(value):
            yield from spec_values(item, f"{field}.{i}")


def resolve_endpoint(llm: EndpointLLM, llm_endpoints: Mapping[str, LlmEndpoint], field: str) -> LlmEndpoint:
    """The deployment's endpoint that `llm` (at `field`) names; InvalidSpec listing those allowed."""
    found = llm_endpoints.get(llm.endpoint)
    if found is None:
        allowed = ", ".join(sorted(llm_endpoints)) or "none (the deployment sets no SAEQ_LLM_ENDPOINTS)"
        raise InvalidSpec(f"no LLM endpoint {llm.endpoint!r} in this deployment; allowed: {allowed}",
                          field=f"{field}.endpoint")
    return found


def check_endpoints(spec: BaseModel, llm_endpoints: Mapping[str, LlmEndpoint], prefix: str = "spec") -> None:
    for field, value in spec_values(spec, prefix):
        if isinstance(value, EndpointLLM):
            resolve_endpoint(value, llm_endpoints, field)


def local_paths(spec: BaseModel, prefix: str = "spec") -> Iterator[tuple[str, str]]:
    """(field, path) of every local file or directory the spec names."""
    for field, value in spec_values(spec, prefix):
        if isinstance(value, ModelSpec) and value.name.startswith("/"):
            yield f"{field}.name", value.name
            if value.gguf_file:  # joined to the directory: an absolute or `..` name would leave it
                yield f"{field}.gguf_file", os.path.join(value.name, value.gguf_file)
        elif isinstance(value, ImportedSae):
            yield f"{field}.path", value.path


def check_local_paths(spec: BaseModel, roots: Sequence[str], prefix: str = "spec") -> None:
    """InvalidSpec naming the first local path that does not lie under one of `roots` once
    symlinks and `..` are resolved (on this machine: the worker checks again on its own)."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    for field, path in local_paths(spec, prefix):
        real = Path(os.path.realpath(path))
        if not any(real == root or root in real.parents for root in real_roots):
            shown = path if str(real) == path else f"{path} (resolved: {real})"
            raise InvalidSpec(f"{shown} is outside the directories this deployment allows local paths "
                              f"under: {', '.join(roots) or 'none'}", field=field)


def check_admissible(spec: BaseModel, *, llm_endpoints: Mapping[str, LlmEndpoint], local_path_roots: Sequence[str],
                     prefix: str = "spec") -> None:
    """Both checks; InvalidSpec naming the field at fault."""
    check_endpoints(spec, llm_endpoints, prefix)
    check_local_paths(spec, local_path_roots, prefix)
