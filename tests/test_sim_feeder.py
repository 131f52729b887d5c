"""Simulator: a feeder breaker cuts only the devices it supplies; the PCC breaker islands
the site. (Before, every breaker counted as a PCC breaker: opening the car-park feeder
took the whole demo site off the grid.)"""

from __future__ import annotations

from gateway.config.loader import load_config
from sim_devices.clock import ManualClock
from sim_devices.physics.site import SimSite
from tests.test_site_configs import SITE_CONFIGS


def _demo() -> SimSite:
    loaded = load_config(SITE_CONFIGS / "demo.yaml")
    assert loaded.simulation is not None
    return SimSite(loaded.config, loaded.simulation,
                   clock=ManualClock(loaded.simulation.clock.start))


def test_opening_the_feeder_stops_its_chargers_and_keeps_the_site_on_grid() -> None:
    site = _demo()
    site.write("ev_bay2", "p_set_kw", 11.0)
    site.step(2 * 3600)  # 09:30: the commuter's car is plugged in at ev_bay2
    assert site.read("ev_bay2")["p_kw"] > 1.0
    assert site.read("ev_feeder")["i_a"] > 0.0
    site.write("ev_feeder", "trip", True)
    site.step(60)
    assert site.connected  # the site is still on the grid
    assert site.read("ev_bay2")["p_kw"] == 0.0
    assert site.read("ev_feeder")["i_a"] == 0.0
    assert site.read("water_heater")["p_kw"] > 0.0  # the rest of the site is supplied
    site.write("ev_feeder", "close", True)
    site.step(60)
    assert site.read("ev_bay2")["p_kw"] > 1.0


def test_the_pcc_breaker_still_islands_the_site() -> None:
    site = _demo()
    site.step(60)
    site.write("pcc_breaker", "trip", True)
    site.step(1)
    assert not site.connected
