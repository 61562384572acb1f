"""A plugin that adds the SAE architecture `toy`, as CONTRIBUTING.md's recipe says: this module is
torch-free (the API imports it through SAEQ_PLUGINS); its model lives in toy_sae_model.py, which
only the worker imports, when it builds or loads a `toy` SAE."""

from __future__ import annotations

from saeq.specs.architectures import SaeArchitecture, SaeArchitectures


def register(architectures: SaeArchitectures) -> None:
    # The toy rule reads no architecture-specific field (no k, no penalty coefficient).
    architectures.add(SaeArchitecture("toy", "tests.plugins.toy_sae_model:ToySae"))
