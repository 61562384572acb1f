"""bench/transcoder.py --smoke: a tiny random Llama's MLP harvested, saeq's skip-transcoder and
sparsify's trained on the same batches, saeq's export read back by sparsify, the MLP replaced in the
model; every figure printed, and the one JSON line of them parses."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.bench.test_benches_run import run_bench

pytestmark = pytest.mark.integration


def test_transcoder_smoke_prints_every_figure_and_its_json(tmp_path):
    if importlib.util.find_spec("sparsify") is None:
        pytest.skip("sparsify (eai-sparsify) is not installed: no peer to train beside or to load the export")
    out = run_bench(["bench/transcoder.py", "--smoke", "--json", str(tmp_path / "out.json")], tmp_path)
    figures = json.loads((tmp_path / "out.json").read_text())
    assert json.loads(next(line for line in out.splitlines() if line.startswith("JSON "))[5:]) == figures

    rows = figures["trainers"]
    assert set(rows) == {"saeq", "sparsify"}, rows
    for r in rows.values():  # the same held-out tokens and token budget for both
        assert r["tokens_per_s"] > 0 and math.isfinite(r["fvu"]) and r["fvu"] > 0
        assert r["validation_tokens"] == rows["saeq"]["validation_tokens"] > 0
    assert figures["saeq_over_sparsify"] == pytest.approx(
        rows["saeq"]["tokens_per_s"] / rows["sparsify"]["tokens_per_s"]
    )
    assert "saeq / sparsify:" in out

    export = figures["export"]  # sparsify loads saeq's file as a skip-transcoder, with saeq's outputs
    assert export["sparsify_loads"] and export["rows"] > 0 and export["max_abs_diff"] <= 1e-5, export

    s = figures["splice"]  # the MLP replaced: CE clean/transcoder/zeroed, recovered, KL, with n
    assert s["loss_positions"] > 0 and s["sinks_excluded"] > 0 and s["kl_transcoder"] >= 0
    assert math.isfinite(s["ce_loss_recovered"]) and "CE loss recovered" in out
