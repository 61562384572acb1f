"""The demo's train step prints each held-out figure with its 95% interval and n, and a manifest
written before intervals still prints, bare."""

from __future__ import annotations

import math

from saeq.dev.demo import _print_train


def manifest(intervals: dict | None) -> dict:
    sae: dict = {"fvu": 0.17412, "l0": 32.0, "dead_fraction": 0.003}
    if intervals is not None:
        sae["intervals"] = intervals
    return {
        "result": {
            "wall_s": 100.0,
            "tokens": 2_457_600,
            "data": {"epochs": 1.0, "train_tokens_available": 2_441_216, "sinks": {"train": {"n_sinks": 19_200}}},
            "saes": {"sae0": sae},
        },
        "saes": {"sae0": {"saelens": "jobs/x/saes/sae0/saelens", "sparsify": "jobs/x/saes/sae0/sparsify"}},
    }


def estimate(value, low, high, n, unit, method="bootstrap"):
    return {"value": value, "low": low, "high": high, "n": n, "unit": unit, "method": method, "confidence": 0.95}


def test_the_train_step_prints_each_figure_with_its_interval(capsys):
    intervals = {
        "fvu": estimate(0.17412, 0.17021, 0.17790, 128, "contexts", "basic_bootstrap"),
        "l0": estimate(32.0, 31.2, 32.9, 128, "contexts"),
        "dead_fraction": estimate(0.003, 0.0012, 0.0077, 4608, "latents", "wilson"),
    }
    _print_train({"state": "succeeded"}, manifest(intervals))
    out = capsys.readouterr().out
    assert "held-out FVU 0.1741 [0.1702, 0.1779] (n=128 contexts)" in out
    assert "L0 32.0 [31.2, 32.9] (n=128 contexts)" in out
    assert "dead 0.3% [0.1%, 0.8%] (n=4,608 latents)" in out


def test_an_old_manifest_without_intervals_prints_the_bare_figures(capsys):
    _print_train({"state": "succeeded"}, manifest(None))
    out = capsys.readouterr().out
    assert "held-out FVU 0.1741 (ordinary tokens), L0 32.0, dead 0.3% (target" in out
    no_bounds = {"fvu": estimate(0.17412, math.nan, math.nan, 1, "contexts")}
    _print_train({"state": "succeeded"}, manifest(no_bounds))
    assert "FVU 0.1741 (n=1 contexts, no interval)" in capsys.readouterr().out
