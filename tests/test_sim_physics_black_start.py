"""The simulated battery's grid_forming point: the setting is only its power-on default, an
island lives only while a battery is commanded grid-forming and has energy, a collapsed
island drops it out, and commanding it again black-starts the site with the grid down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.test_sim_physics_site import _p, _site

NIGHT = datetime(2025, 6, 21, 22, 0, tzinfo=UTC).timestamp()


def test_setting_is_the_power_on_default_and_the_point_reads_back() -> None:
    assert _site()._batteries[0].grid_forming is False
    site = _site({"devices": {"bess1": {"grid_forming": True}}})
    assert site.read("bess1")["grid_forming"] is True
    assert site.write("bess1", "grid_forming", False) is False
    assert site.read("bess1")["grid_forming"] is False


def test_commanding_grid_forming_black_starts_the_island_while_the_grid_is_down() -> None:
    site = _site({"devices": {"bess1": {"initial_soc_pct": 60.0}}}, start=NIGHT)
    site.step(10)
    site.write("br1", "trip", True)
    site.set_grid(False)
    site.step(10)
    assert _p(site, "load1") == 0.0 and float(site.read("pv1")["v_v"]) == 0.0  # dark
    assert site.write("bess1", "grid_forming", True) is True
    site.step(10)
    load = _p(site, "load1")
    assert load > 0.0 and float(site.read("pv1")["v_v"]) > 200.0
    assert _p(site, "bess1") == pytest.approx(  # the battery carries the island
        load + _p(site, "ev1") - _p(site, "pv1") - _p(site, "wt1"))
    assert site.write("bess1", "grid_forming", False) is False
    site.step(10)
    assert _p(site, "load1") == 0.0  # nobody forms: dark again


def test_an_empty_battery_cannot_form_and_a_collapse_drops_it_out() -> None:
    site = _site({"devices": {"bess1": {"initial_soc_pct": 5.0, "soc_min_pct": 5.0}}},
                 start=NIGHT)
    site.set_grid(False)
    assert site.write("bess1", "grid_forming", True) is False  # no energy: reads back off
    site.step(10)
    assert _p(site, "load1") == 0.0
    big = _site({"devices": {"bess1": {"grid_forming": True, "initial_soc_pct": 60.0},
                             "load1": {"profile": "constant", "p_kw": 150.0,
                                       "noise_pct": 0.0}}}, start=NIGHT)
    big.set_grid(False)
    big.step(10)  # 150 kW on a 100 kW inverter: the island collapses
    assert big.read("bess1")["grid_forming"] is False
    big.step(10)
    big.step(10)
    assert _p(big, "load1") == 0.0  # stays dark until commanded again
