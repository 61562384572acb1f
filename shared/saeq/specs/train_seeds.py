"""`seeds` on a train spec: each SAE configuration trained once per seed, all fed by one read of
the data, so the result can give each figure's seed-to-seed spread (the noise floor a claimed
improvement must beat). Here: which SAEs a spec trains, with their names and seeds, and the checks."""

from __future__ import annotations

import re
from collections.abc import Sequence
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


class FloorRuns(NamedTuple):
    """The SAEs of a `seeds` train job that give a comparison its seed noise floor."""

    config: str
    """Their configuration's name (`saes[i].name`, default `sae{i}`)."""
    runs: list[SaeRun]
    """Its seeds' SAEs, less those compared."""
    held_apart: list[str]
    """Its seeds' SAEs that are A or B: left out, so the floor is not estimated from the pair it judges."""


class NoFloor(NamedTuple):
    """Why a train job gives no seed noise floor."""

    field: str
    """The seed floor's field to change: `job_id` or `config`."""
    reason: str


def floor_runs(
    spec: TrainSpec, job_id: str, config: str | None, compared: Sequence[tuple[str, str | None]]
) -> FloorRuns | NoFloor:
    """The floor's SAEs of train job `job_id` (its `spec`): configuration `config` (None: the one
    an SAE in `compared` comes from, else the job's only one) under each seed, less the SAEs of
    `compared` ((train job id, SAE name or None for the job's first)); NoFloor says why there is none."""
    if spec.seeds is None:
        return NoFloor("job_id", f"train job {job_id} has no `seeds`: no seed-to-seed spread to take a floor from")
    runs = sae_runs(spec)
    names = [cfg.name or f"sae{i}" for i, cfg in enumerate(spec.saes)]
    ours = {name or runs[0].name for other, name in compared if other == job_id}
    if config is None:
        of_compared = [names[r.index] for r in runs if r.name in ours]
        if of_compared:
            config = of_compared[0]
        elif len(names) == 1:
            config = names[0]
        else:
            return NoFloor("config", f"train job {job_id} has configurations {names}: name one")
    if config not in names:
        return NoFloor("config", f"train job {job_id} has configurations {names}, not {config!r}")
    of_config = [r for r in runs if names[r.index] == config]
    kept = [r for r in of_config if r.name not in ours]
    if len(kept) < 2:
        return NoFloor(
            "job_id",
            f"train job {job_id} has {len(of_config)} seeds of {config!r}, {len(kept)} apart from the two "
            "compared: a floor needs at least 2 (train more seeds)",
        )
    return FloorRuns(config, kept, [r.name for r in of_config if r.name in ours])
