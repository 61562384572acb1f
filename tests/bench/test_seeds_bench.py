"""bench/seeds.py at its smallest (`--smoke`: a tiny local Llama harvested through a local stack):
it trains four seeds and a quarter-tokens SAE, compares them as the worker would and prints both
acceptance lines, the floor's n and the stable fraction."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_benches_run import run_bench

pytestmark = pytest.mark.integration


def test_seeds_bench_smoke(tmp_path):
    out = run_bench(["bench/seeds.py", "--smoke", "--out", str(tmp_path / "seeds")], tmp_path, timeout=300)
    assert "seed noise floor: n=2 seeds (topk-8x-k32-seed2, topk-8x-k32-seed3)" in out, out[-3000:]
    assert "no seed noise floor: this is evaluation noise only" in out
    assert "acceptance 3: seed 0 vs 1 FVU:" in out and "acceptance 5: stable features between seeds 0 and 1" in out
    report = json.loads((tmp_path / "seeds" / "compare.json").read_text())
    assert report["seeds"]["noise_floor"]["held_apart"] == ["topk-8x-k32-seed0", "topk-8x-k32-seed1"]
    assert report["quarter"]["noise_floor"]["n"] == 3 and report["train_tokens"] == {"seeds": 16_384, "quarter": 4096}
