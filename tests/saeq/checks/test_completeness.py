"""Completeness on planted activations: a feature firing only on one element's article covers it;
features shared by members or firing everywhere cover no one."""

from __future__ import annotations

import pytest
import torch

from saeq.checks.completeness import completeness, coverage_summary
from saeq.checks.elements import ELEMENTS

NAMES = [e.name for e in ELEMENTS[:6]]  # hydrogen .. carbon


def _planted():
    g = torch.Generator().manual_seed(0)
    members = torch.zeros(6, 10)
    background = torch.zeros(200, 10)
    members[0, 3] = 4.0  # feature 3: hydrogen only
    background[:1, 3] = 2.5  # ... and one background article, strongly: within the 1% allowed
    members[1, 4] = members[2, 4] = 3.0  # feature 4: helium and lithium alike
    members[:, 5] = 1.0 + torch.rand(6, generator=g)  # feature 5: everywhere
    background[:, 5] = 1.0 + torch.rand(200, generator=g)
    members[3, 6] = 2.0  # feature 6: beryllium, but as strongly on 5% of the background
    background[:10, 6] = 1.5
    return members, background


def test_a_feature_firing_only_on_one_members_article_covers_it():
    members, background = _planted()
    results = completeness(members, background, NAMES, max_background_rate=0.01)
    by_name = {r.name: r for r in results}
    h = by_name["Hydrogen"]
    assert h.covered and h.feature == 3 and h.activation == 4.0 and h.background_rate == 0.005
    assert h.n_specific == 1


def test_shared_and_everywhere_features_cover_no_member():
    members, background = _planted()
    by_name = {r.name: r for r in completeness(members, background, NAMES, max_background_rate=0.01)}
    for name in ("Helium", "Lithium", "Beryllium", "Boron", "Carbon"):
        assert not by_name[name].covered, name
    assert by_name["Helium"].feature == 4  # reported as the closest, though shared
    assert by_name["Beryllium"].background_rate == 0.05
    summary = coverage_summary(list(by_name.values()))
    ci = summary.pop("coverage_ci")
    assert summary == {"n_members": 6, "n_covered": 1, "coverage": 1 / 6, "n_distinct_features": 1}
    # one of six members: Wilson's interval, wide as six members leave it
    assert (ci["method"], ci["n"], ci["unit"]) == ("wilson", 6, "members")
    assert ci["low"] == pytest.approx(0.0301, abs=1e-4) and ci["high"] == pytest.approx(0.5635, abs=1e-4)
    # a looser background rule lets beryllium's feature count
    loose = completeness(members, background, NAMES, max_background_rate=0.05)
    assert [r.name for r in loose if r.covered] == ["Hydrogen", "Beryllium"]


def test_elements_sit_where_the_periodic_table_puts_them():
    place = {e.symbol: (e.row, e.column) for e in ELEMENTS}
    assert place["H"] == (1, 1) and place["He"] == (1, 18) and place["B"] == (2, 13)
    assert place["Fe"] == (4, 8) and place["Hf"] == (6, 4) and place["Rn"] == (6, 18)
    assert place["La"] == (8, 3) and place["Lu"] == (8, 17) and place["Cm"] == (9, 10)
    assert len(set(place.values())) == 96
