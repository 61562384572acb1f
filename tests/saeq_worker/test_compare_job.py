"""`saeq compare` through the real API and a real worker: an SAE trained on a quarter of the tokens
is found worse than the full one, on the same contexts, beyond the seed noise floor its train job's
other seeds give; two seeds are judged against the floor of the remaining two; without a floor the
output says it is evaluation noise only; an SAE against itself is within noise on every metric and
matches each of its live features; a bad reference is a 422 naming the field."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from saeq.client.cli import main
from saeq.client.cli_compare import compare_table
from saeq.client.client import ApiError
from saeq.specs import HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from saeq.specs.compare import COMPARED_METRICS, NO_FLOOR
from tests.saeq_worker.conftest import HOOK
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harvest_job(client_module, tmp_path_factory):
    """Smaller than the package's (two SAEs that differ, not good ones): 2 shards."""
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)), hooks=[HOOK], max_tokens=8192, context_len=64, shard_tokens=4096
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


def _train(client, harvest_job, total_tokens: int, seeds: list[int] | None = None) -> dict:
    spec = TrainSpec.model_validate(
        {
            "activations": {"job_id": harvest_job["id"], "hook": HOOK},
            "saes": [SaeConfig(name="topk", d_sae=256, k=8)],
            "batch_size": 512,
            "total_tokens": total_tokens,
            "validation_tokens": 1024,
            "seeds": seeds,
        }
    )
    return client.submit(spec)


@pytest.fixture(scope="module")
def train_jobs(client_module, harvest_job):
    """(full, quarter): the same config on 16,384 training tokens under seeds 0-3 (its first SAE,
    topk-seed0, is "the full one") and on 4,096 tokens under seed 0, trained side by side."""
    full = _train(client_module, harvest_job, 16_384, seeds=[0, 1, 2, 3])
    quarter = _train(client_module, harvest_job, 4096)
    return client_module.wait(full["id"], timeout=300), client_module.wait(quarter["id"], timeout=300)


@pytest.fixture(scope="module")
def train_job(train_jobs):
    return train_jobs[0]


@pytest.fixture(scope="module")
def quarter_job(train_jobs):
    return train_jobs[1]


def test_a_quarter_tokens_sae_is_found_worse_through_the_cli(stack, client_module, train_job, quarter_job):
    args = ["--url", stack.url, "--api-key", stack.admin_key, "compare", train_job["id"], quarter_job["id"]]
    out = CliRunner().invoke(main, [*args, "--max-tokens", "1024", "--wait", "--json"])
    assert out.exit_code == 0, out.output
    c = json.loads(out.output)
    assert (c["a"]["job_id"], c["b"]["job_id"]) == (train_job["id"], quarter_job["id"])
    rows = {r["metric"]: r for r in c["metrics"]}
    assert list(rows) == list(COMPARED_METRICS)
    fvu = rows["fvu"]
    assert fvu["better"] == "a" and fvu["difference"]["high"] < 0 and fvu["verdict"].startswith("A better by"), fvu
    assert fvu["difference"]["value"] == pytest.approx(fvu["a"]["value"] - fvu["b"]["value"])
    # auto: A's train job has seeds 1-3 of A's configuration besides A (seed 0): the floor is theirs.
    floor = c["noise_floor"]
    assert (floor["source"], floor["n"], floor["job_id"], floor["config"]) == ("seeds", 3, train_job["id"], "topk")
    assert floor["saes"] == ["topk-seed1", "topk-seed2", "topk-seed3"] and floor["held_apart"] == ["topk-seed0"]
    assert fvu["floor"] == floor["floors"]["fvu"] > 0 and abs(fvu["difference"]["value"]) > fvu["floor"]
    assert "above the noise floor" in fvu["verdict"] and c["noise_note"].startswith("seed noise floor: n=3")
    assert fvu["difference"]["n"] == 1024 // 64 and fvu["difference"]["method"] == "paired_bootstrap"
    assert rows["l0"]["better"] is None  # TopK at the same k: no better side
    f = c["features"]
    assert len(f["match"]) == 256 and 0 < f["n_alive"] <= 256 and 0 <= f["n_stable"] <= f["n_alive"]
    table = compare_table(c).splitlines()
    assert table[0].startswith(f"A: {train_job['id'][:12]}/topk-seed0") and "16 contexts" in table[2]
    assert table[3].startswith("seed noise floor: n=3 seeds (topk-seed1, topk-seed2, topk-seed3)")
    fvu_line = next(line for line in table if line.startswith("fvu "))
    assert "A better by" in fvu_line and f"{fvu['a']['value']:.4g}" in fvu_line and f"{fvu['floor']:.4g}" in fvu_line
    assert table[-1].startswith(f"stable features: {f['n_stable']:,} of A's {f['n_alive']:,} live latents")


def test_two_seeds_are_judged_against_the_floor_of_the_other_two(client_module, train_job):
    c = client_module.compare(
        train_job["id"], train_job["id"], name_a="topk-seed0", name_b="topk-seed1", max_tokens=512, wait=True
    )
    floor = c["noise_floor"]
    assert floor["saes"] == ["topk-seed2", "topk-seed3"] and floor["seeds"] == [2, 3] and floor["n"] == 2
    assert floor["held_apart"] == ["topk-seed0", "topk-seed1"]  # not estimated from the pair it judges
    for row in c["metrics"]:
        name = row["metric"]
        values = floor["values"][name]
        # t(0.975, 1) x sqrt(2) x sd of the two floor seeds' figures on these contexts (sd = |v0 - v1| / sqrt 2)
        assert row["floor"] == pytest.approx(12.7062 * abs(values[0] - values[1]), rel=1e-4, abs=1e-12)
        d = row["difference"]
        beyond = not d["low"] <= 0 <= d["high"] and abs(d["value"]) > row["floor"]
        assert (row["better"] is not None) == (beyond and name != "l0"), row
        if not beyond:
            assert row["verdict"].startswith("within noise"), row


def test_without_a_floor_the_output_says_it_is_evaluation_noise_only(stack, client_module, quarter_job, train_job):
    # Neither job gives a floor: the quarter's has no seeds (auto looks at A's job, then B's).
    c = client_module.compare(quarter_job["id"], quarter_job["id"], max_tokens=512, wait=True)
    assert c["noise_floor"] is None and c["noise_note"].startswith(NO_FLOOR) and "has no `seeds`" in c["noise_note"]
    assert all(row["floor"] is None for row in c["metrics"])
    args = ["--url", stack.url, "--api-key", stack.admin_key, "compare", train_job["id"], quarter_job["id"]]
    out = CliRunner().invoke(main, [*args, "--max-tokens", "512", "--seed-floor", "off", "--wait"])
    assert out.exit_code == 0, out.output
    assert "no seed noise floor: this is evaluation noise only (seed_floor: off)" in out.output


def test_an_sae_against_itself_is_within_noise_and_matches_its_features(client_module, train_job):
    c = client_module.compare(train_job["id"], train_job["id"], max_tokens=512, wait=True, timeout=300)
    for row in c["metrics"]:
        assert row["better"] is None and row["verdict"].startswith("within noise"), row
    f = c["features"]
    alive = [i for i, r in enumerate(f["correlation"]) if not math.isnan(r)]
    assert f["match"] == list(range(256)) and min(f["cosine"]) == pytest.approx(1.0, abs=1e-6)
    assert f["n_stable"] == f["n_alive"] == len(alive) > 0 and f["stable_fraction"]["value"] == 1.0


def test_bad_references_are_a_422_naming_the_field(client_module, harvest_job, train_job):
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], harvest_job["id"])
    assert e.value.status == 422 and "compare_with.sae.job_id" in str(e.value) and "harvest job" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], train_job["id"], name_b="nope")
    assert e.value.status == 422 and "compare_with.sae.name" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], train_job["id"], noise_floor={"fvx": 0.1})
    assert e.value.status == 422 and "noise_floor" in str(e.value)


def test_a_bad_seed_floor_is_a_422_naming_the_field(client_module, train_job, quarter_job):
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], quarter_job["id"], seed_floor=quarter_job["id"])
    assert e.value.status == 422 and "seed_floor.job_id" in str(e.value) and "no `seeds`" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], quarter_job["id"], seed_floor={"job_id": train_job["id"], "config": "x"})
    assert e.value.status == 422 and "seed_floor.config" in str(e.value) and "['topk']" in str(e.value)
    with pytest.raises(ApiError) as e:
        client_module.compare(train_job["id"], train_job["id"], noise_floor={"fvu": 0.1}, seed_floor=train_job["id"])
    assert e.value.status == 422 and "noise_floor" in str(e.value) and "not both" in str(e.value)
