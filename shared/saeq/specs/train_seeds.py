"""`seeds` on a train spec: each SAE configuration trained once per seed, all fed by one read of
the data, so the result can give each figure's seed-to-seed spread (the noise floor a claimed
improvement must beat). Here: which SAEs a spec trains, with their names and seeds, and the checks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from saeq.specs.common import _SAE_NAME, invalid

if TYPE_CHECKING:
    from saeq.specs.train import SaeConfig, TrainSpec

MAX_TRAINED_SAES = 64
"""SAEs one job may train with `seeds` (configurations x seeds): every batch feeds every one."""


class SaeRun(NamedTuple):
    """One SAE a train job trains."""

    name: str
    """`saes[i].name` (default `sae{i}`), with `-seed{seed}` appended when the spec has `seeds`."""
    config: SaeConfig
    index: int
    """Its configuration's index in `spec.saes`."""
    seed: int
    """Seeds its initialisation: the seed of `seeds`, else the spec's `seed`."""


def sae_runs(spec: TrainSpec) -> list[SaeRun]:
    """Every SAE `spec` trains, in training order: each configuration once per seed."""
    runs = []
    for i, cfg in enumerate(spec.saes):
        base = cfg.name or f"sae{i}"
        if spec.seeds is None:
            runs.append(SaeRun(base, cfg, i, spec.seed))
        else:
            runs.extend(SaeRun(f"{base}-seed{s}", cfg, i, s) for s in spec.seeds)
    return runs


def check_seeds(spec: TrainSpec) -> None:
    """Distinct seeds, at most MAX_TRAINED_SAES SAEs in all, names that stay names and unique."""
    if spec.seeds is None:
        return
    for j, s in enumerate(spec.seeds):
        if s in spec.seeds[:j]:
            raise invalid(spec, f"seeds.{j}", f"seeds: seed {s} is given twice (each seed once)")
    n = len(spec.saes) * len(spec.seeds)
    if n > MAX_TRAINED_SAES:
        raise invalid(
            spec,
            "seeds",
            f"{len(spec.saes)} SAEs x {len(spec.seeds)} seeds = {n} SAEs, more than {MAX_TRAINED_SAES} in one job",
        )
    seen: set[str] = set()
    for run in sae_runs(spec):
        if not re.fullmatch(_SAE_NAME, run.name):
            raise invalid(
                spec, f"saes.{run.index}.name", f"{run.name!r} (the name with its seed) is longer than 64 characters"
            )
        if run.name in seen:
            raise invalid(spec, "seeds", f"with seeds, two SAEs are named {run.name!r}: rename one of saes")
        seen.add(run.name)
