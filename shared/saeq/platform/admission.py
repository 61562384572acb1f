"""What a deployment lets a spec name: LLM endpoints from its `llm_endpoints` allow-list and local
paths under its `local_path_roots`. The API checks at submit, the worker again before it loads."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from saeq.errors import InvalidSpec
from saeq.platform.settings import LlmEndpoint
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
        raise InvalidSpec(
            f"no LLM endpoint {llm.endpoint!r} in this deployment; allowed: {allowed}", field=f"{field}.endpoint"
        )
    return found


def check_endpoints(spec: BaseModel, llm_endpoints: Mapping[str, LlmEndpoint], prefix: str = "spec") -> None:
    for field, value in spec_values(spec, prefix):
        if isinstance(value, EndpointLLM):
            resolve_endpoint(value, llm_endpoints, field)


def local_paths(spec: BaseModel, prefix: str = "spec") -> Iterator[tuple[str, str]]:
    """(field, path) of every local file or directory the spec names. A hub id is never one: the
    loaders resolve it through the hub's cache only (saeq.ml.models, saeq.ml.corpus)."""
    for field, value in spec_values(spec, prefix):
        if isinstance(value, ModelSpec) and value.source == "path":
            yield f"{field}.name", value.name
            if value.gguf_file:  # a plain file name (saeq.specs), but it may be a link out of the directory
                yield f"{field}.gguf_file", os.path.join(value.name, value.gguf_file)
        elif isinstance(value, ImportedSae):
            yield f"{field}.path", value.path


def check_local_paths(spec: BaseModel, roots: Sequence[str], prefix: str = "spec") -> None:
    """InvalidSpec naming the first local path that does not lie under one of `roots` once
    symlinks and `..` are resolved, or a directory holding a link that leads out of them (the
    loaders read the files in it). Checked on this machine: the worker checks again on its own."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]

    def allowed(path: str) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == root or root in real.parents for root in real_roots)

    def refuse(path: str, field: str, what: str = "") -> None:
        real = os.path.realpath(path)
        # Where a link leads is shown for links inside the roots only: elsewhere it would tell the
        # caller what exists outside them.
        inside = any(Path(path) == Path(r) or Path(r) in Path(path).parents for r in roots)
        shown = f"{path} (resolved: {real})" if real != path and inside else path
        raise InvalidSpec(
            f"{what}{shown} is outside the directories this deployment allows local paths "
            f"under: {', '.join(roots) or 'none'}",
            field=field,
        )

    named = list(local_paths(spec, prefix))
    for field, path in named:
        if not allowed(path):
            refuse(path, field)
    for field, path in named:
        for link in _links_in(path):
            if not allowed(link):
                refuse(link, field, f"{path} holds a link out of the allowed directories: ")


def _links_in(path: str) -> list[str]:
    """The symbolic links directly inside directory `path` (none when it is no directory here)."""
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_symlink()]
    except OSError:  # missing, not a directory, not readable: the loader reports it, under the roots
        return []


def check_admissible(
    spec: BaseModel, *, llm_endpoints: Mapping[str, LlmEndpoint], local_path_roots: Sequence[str], prefix: str = "spec"
) -> None:
    """Both checks; InvalidSpec naming the field at fault."""
    check_endpoints(spec, llm_endpoints, prefix)
    check_local_paths(spec, local_path_roots, prefix)
