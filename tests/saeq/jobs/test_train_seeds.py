"""`seeds` on a train spec: one read of the data trains each configuration once per seed (each as
a run with that seed alone would start it), and the result gives each figure's spread over seeds;
bad seeds are refused naming the field."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from saeq.jobs.train import train_saes
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec
from saeq.specs.train_seeds import FloorRuns, NoFloor, floor_runs
from tests.saeq.conftest import planted_dictionary

JOB, HOOK = "d" * 32, "blocks.1.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**kw) -> TrainSpec:
    kw = {
        "saes": [SaeConfig(d_sae=64, k=3), SaeConfig(name="wide", d_sae=128, k=3)],
        "total_tokens": 20 * 256,
        "batch_size": 256,
        "checkpoint_every_tokens": None,
    } | kw
    return TrainSpec(activations=ActivationsRef(job_id=JOB, hook=HOOK), **kw)


def counted(x: torch.Tensor, batch: int, reads: list[int]):
    for i in itertools.count():
        reads.append(i)
        start = (i * batch) % (x.shape[0] - batch)
        yield x[start : start + batch]


@pytest.fixture(scope="module")
def data():
    x, _ = planted_dictionary(n_features=64, d=32, n_active=3, n=8_192)
    return x[:-2048], x[-2048:]


def test_seeds_train_every_configuration_per_seed_in_one_read(data):
    train, val = data
    reads: list[int] = []
    s = spec(seeds=[3, 7, 11])
    result = train_saes(s, counted(train, s.batch_size, reads), validation=val)
    assert len(reads) == 20  # one batch read per step, for all six SAEs
    assert list(result.saes) == [f"{base}-seed{k}" for base in ("sae0", "wide") for k in (3, 7, 11)]
    assert not torch.equal(result.saes["sae0-seed3"].W_dec, result.saes["sae0-seed7"].W_dec)

    spread = result.seed_spread
    assert set(spread) == {"sae0", "wide"}
    for base in ("sae0", "wide"):
        assert spread[base]["seeds"] == [3, 7, 11]
        for figure in ("fvu", "mse", "l0", "dead_fraction"):
            values = np.array([getattr(result.metrics[f"{base}-seed{k}"], figure) for k in (3, 7, 11)])
            row = spread[base][figure]
            assert row["n"] == 3 and row["min"] <= row["mean"] <= row["max"]
            assert row["mean"] == pytest.approx(values.mean()) and row["sd"] == pytest.approx(values.std(ddof=1))
            assert (row["min"], row["max"]) == (values.min(), values.max())
    assert spread["sae0"]["fvu"]["sd"] > 0  # different initialisations end apart
    assert result.to_dict()["seed_spread"] == spread  # what the worker publishes in the manifest


def test_a_seed_starts_its_sae_as_a_run_of_that_seed_alone(data):
    """Same data order (the spec's `seed`), so seeds=[0] is the run without seeds, weight for weight."""
    train, val = data
    one = SaeConfig(d_sae=64, k=3)
    plain = train_saes(spec(saes=[one]), counted(train, 256, []), validation=val)
    seeded = train_saes(spec(saes=[one], seeds=[0]), counted(train, 256, []), validation=val)
    assert torch.equal(plain.saes["sae0"].W_dec, seeded.saes["sae0-seed0"].W_dec)
    assert plain.seed_spread == {} and "seed_spread" not in plain.to_dict()
    assert seeded.seed_spread["sae0"]["fvu"]["sd"] is None  # one seed: no spread to give


@pytest.mark.parametrize(
    ("seeds", "field", "words"),
    [
        ([1, 2, 1], ("seeds", 2), "given twice"),
        ([], ("seeds",), "at least 1"),
        (list(range(17)), ("seeds",), "at most 16"),
        ([-1], ("seeds", 0), "greater than or equal to 0"),
        ([1.5], ("seeds", 0), "integer"),
    ],
)
def test_bad_seeds_are_refused_naming_the_field(seeds, field, words):
    with pytest.raises(ValidationError) as e:
        spec(seeds=seeds)
    err = e.value.errors()[0]
    assert err["loc"] == field and words in err["msg"], err


def test_too_many_saes_or_too_long_names_are_refused():
    with pytest.raises(ValidationError) as e:
        spec(saes=[SaeConfig(name=f"s{i}", d_sae=64, k=3) for i in range(5)], seeds=list(range(13)))
    assert e.value.errors()[0]["loc"] == ("seeds",) and "65 SAEs" in e.value.errors()[0]["msg"]
    with pytest.raises(ValidationError) as e:
        spec(saes=[SaeConfig(name="n" * 60, d_sae=64, k=3)], seeds=[12345])
    assert e.value.errors()[0]["loc"] == ("saes", 0, "name")


def test_the_cost_and_the_quota_count_every_seed():
    from saeq.specs.costs import job_cost

    one, three = job_cost(spec(), d_in=32), job_cost(spec(seeds=[1, 2, 3]), d_in=32)
    assert one is not None and three is not None
    assert three.units == pytest.approx(3 * one.units, abs=1) and "576 latents" in three.formula  # 3 x (64 + 128)


def test_a_sweep_over_gpus_counts_every_seeds_sae():
    """SAE i of the trained ones (configuration x seed) goes to GPU i % gpus: one configuration
    under four seeds keeps four GPUs busy."""
    one = [SaeConfig(d_sae=64, k=3)]
    assert spec(saes=one, seeds=[0, 1, 2, 3], gpus=4).gpus == 4
    with pytest.raises(ValidationError) as e:
        spec(saes=one, seeds=[0, 1], gpus=4)
    assert e.value.errors()[0]["loc"] == ("gpus",) and "2 SAE(s) to train" in e.value.errors()[0]["msg"]


def test_the_floor_takes_the_compared_configurations_other_seeds():
    s = spec(seeds=[0, 1, 2, 3])
    other = "e" * 32
    found = floor_runs(s, JOB, None, [(JOB, "wide-seed0"), (JOB, "wide-seed1")])
    assert isinstance(found, FloorRuns) and found.config == "wide"
    assert [r.name for r in found.runs] == ["wide-seed2", "wide-seed3"] and [r.seed for r in found.runs] == [2, 3]
    assert found.held_apart == ["wide-seed0", "wide-seed1"]
    # B of another job; A named by default (None: the job's first SAE, sae0-seed0): three seeds left.
    found = floor_runs(s, JOB, None, [(JOB, None), (other, "x")])
    assert isinstance(found, FloorRuns) and [r.seed for r in found.runs] == [1, 2, 3] and found.config == "sae0"
    assert floor_runs(s, JOB, None, [(other, "a"), (other, "b")]) == NoFloor(
        "config", f"train job {JOB} has configurations ['sae0', 'wide']: name one"
    )
    assert floor_runs(s, JOB, "nope", []).field == "config"  # type: ignore[union-attr]
    few = floor_runs(spec(seeds=[0, 1, 2]), JOB, "sae0", [(JOB, "sae0-seed0"), (JOB, "sae0-seed1")])
    assert isinstance(few, NoFloor) and few.field == "job_id" and "at least 2" in few.reason
    assert floor_runs(spec(), JOB, None, []) == NoFloor(
        "job_id", f"train job {JOB} has no `seeds`: no seed-to-seed spread to take a floor from"
    )
