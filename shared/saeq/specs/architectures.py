"""The SAE architectures a spec may name: a registry of names and the SaeConfig fields each reads.

It holds no torch, so the API validates `SaeConfig.architecture` against it; the torch model of an
architecture is named by import path and imported by `saeq.ml.sae` in the worker only. A plugin
module (listed in SAEQ_PLUGINS, imported by the API and the worker at startup) adds architectures
from its `register(architectures)` function: CONTRIBUTING.md, "Add an SAE architecture".
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

PLUGINS_ENV = "SAEQ_PLUGINS"
"""Comma-separated module paths imported at startup; each has a `register(architectures)` function."""


@dataclass(frozen=True)
class SaeArchitecture:
    """One activation rule, as the spec side knows it."""

    name: str
    """What `SaeConfig.architecture` says, e.g. `topk`."""
    model_class: str
    """`module:Class` of its torch model, a `saeq.ml.sae.SparseAutoencoder` subclass."""
    reads: tuple[str, ...] = ()
    """The architecture-specific SaeConfig fields it reads (`k`, `l1_coefficient`...); one it does
    not read may not be set to a non-default value."""
    transcoder: bool = False
    """It reads one hook point and predicts another (a transcoder): a train job names both,
    `activations.hook` (its input) and `activations.target_hook` (what it predicts)."""
    crosscoder: bool = False
    """It reads and writes several hook points at once (a crosscoder): a train job names them all,
    `activations.hooks`."""

    free_decoder: bool = False
    """Its decoder rows train freely by default (`SaeConfig.normalize_decoder` None), started at
    norm 0.1; otherwise they are kept at unit norm."""

    @property
    def uses_k(self) -> bool:
        """It keeps k latents per token (so needs 1 <= k <= d_sae)."""
        return "k" in self.reads


class SaeArchitectures:
    """Architectures by name, in registration order (the built-in ones first)."""

    def __init__(self) -> None:
        self._by_name: dict[str, SaeArchitecture] = {}

    def add(self, architecture: SaeArchitecture) -> SaeArchitecture:
        """Register an architecture; registering the same one again is a no-op (a plugin loaded
        twice), another one under a taken name is an error."""
        known = self._by_name.get(architecture.name)
        if known is not None and known != architecture:
            raise ValueError(f"SAE architecture {architecture.name!r} is already registered as {known}")
        self._by_name[architecture.name] = architecture
        return architecture

    def get(self, name: str) -> SaeArchitecture:
        """The architecture called `name`; ValueError listing the known names otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown architecture {name!r}; one of {self.names()}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def readers(self, field: str) -> tuple[str, ...]:
        """Names of the architectures that read `field`."""
        return tuple(a.name for a in self._by_name.values() if field in a.reads)


SAE_ARCHITECTURES = SaeArchitectures()
_TOPK_FIELDS = ("k", "aux_k", "auxk_alpha")
_JUMPRELU_FIELDS = ("jumprelu_init_threshold", "jumprelu_bandwidth", "l0_coefficient")
_TRANSCODERS = "saeq.ml.sae.transcoder:"
for _builtin in (
    SaeArchitecture("topk", "saeq.ml.sae.architectures:TopKSae", _TOPK_FIELDS, free_decoder=True),
    SaeArchitecture("batchtopk", "saeq.ml.sae.architectures:BatchTopKSae", _TOPK_FIELDS, free_decoder=True),
    SaeArchitecture(
        "jumprelu",
        "saeq.ml.sae.architectures:JumpReluSae",
        _JUMPRELU_FIELDS,
    ),
    SaeArchitecture("relu", "saeq.ml.sae.architectures:ReluSae", ("l1_coefficient",)),
    SaeArchitecture(
        "matryoshka_batchtopk",
        "saeq.ml.sae.matryoshka:MatryoshkaBatchTopKSae",
        (*_TOPK_FIELDS, "matryoshka_groups"),
        free_decoder=True,
    ),
    SaeArchitecture("topk_transcoder", _TRANSCODERS + "TopKTranscoder", _TOPK_FIELDS, transcoder=True),
    SaeArchitecture("topk_skip_transcoder", _TRANSCODERS + "TopKSkipTranscoder", _TOPK_FIELDS, transcoder=True),
    SaeArchitecture("jumprelu_transcoder", _TRANSCODERS + "JumpReluTranscoder", _JUMPRELU_FIELDS, transcoder=True),
    SaeArchitecture(
        "jumprelu_skip_transcoder", _TRANSCODERS + "JumpReluSkipTranscoder", _JUMPRELU_FIELDS, transcoder=True
    ),
    SaeArchitecture("topk_crosscoder", "saeq.ml.sae.crosscoder:TopKCrosscoder", _TOPK_FIELDS, crosscoder=True),
):
    SAE_ARCHITECTURES.add(_builtin)
BUILTIN_ARCHITECTURES = SAE_ARCHITECTURES.names()


def load_plugins(modules: str | None = None) -> list[str]:
    """Import each module of the comma-separated list `modules` (None: the SAEQ_PLUGINS variable)
    and call its `register(SAE_ARCHITECTURES)`. Returns the modules loaded. A module that cannot be
    imported fails the process at startup, never a job later."""
    names = os.environ.get(PLUGINS_ENV, "") if modules is None else modules
    loaded = []
    for name in (n.strip() for n in names.split(",")):
        if name:
            importlib.import_module(name).register(SAE_ARCHITECTURES)
            loaded.append(name)
    return loaded
