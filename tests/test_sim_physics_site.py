"""The simulated site: building from a config, the meter balance, islanding, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config.models import SiteConfig
from gateway.model import NATURES
from gateway.yamlsrc import SourceError, load_yaml_text, parse_model
from sim_devices.clock import ManualClock, SimClock
from sim_devices.physics import Battery, Evse, Meter, PvInverter, SimSite
from sim_devices.settings import SimulationSettings, load_simulation_settings

NOON = datetime(2025, 6, 21, 11, 0, tzinfo=UTC).timestamp()


def _dev(dev_id: str, nature: str, **ratings: float) -> dict[str, Any]:
    return {"id": dev_id, "nature": nature, "template": "t", "connection": "c1",
            "ratings": ratings}


def _cfg(simulation: dict[str, Any] | None = None, *extra: dict[str, Any]) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "s", "latitude": 48.1, "longitude": 11.6, "timezone": "Europe/Berlin"},
        "gateways": [{"id": "gw1"}],
        "connections": [{"id": "c1", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            _dev("pv1", "pv_inverter", kwp=60.0, p_max_kw=50.0),
            _dev("wt1", "wind_turbine", p_max_kw=30.0),
            _dev("bess1", "bess", capacity_kwh=200.0, p_max_kw=100.0),
            _dev("bms1", "bms"),
            _dev("ev1", "evse", p_max_kw=11.0),
            _dev("load1", "load", p_max_kw=40.0),
            _dev("m1", "meter"),
            _dev("br1", "breaker"),
            *extra,
        ],
        "simulation": simulation,
    })


SESSION = {"arrival": "2025-06-21T08:00:00Z", "departure": "2025-06-21T18:00:00Z",
           "energy_kwh": 40.0}


def _site(simulation: dict[str, Any] | None = None, start: float = NOON) -> SimSite:
    return SimSite(_cfg(simulation), clock=ManualClock(start))


def _p(site: SimSite, dev: str) -> float:
    return float(site.read(dev)["p_kw"])


def test_site_without_simulation_section_derives_everything_from_ratings() -> None:
    site = _site(None)
    site.step(60)
    for dev_id, model in site.models.items():
        assert set(model.read_points()) == set(NATURES[model.nature]), dev_id
    pv = site.models["pv1"]
    assert isinstance(pv, PvInverter) and pv.kwp == 60.0 and pv.p_rated_kw == 50.0
    assert _p(site, "pv1") > 20.0  # noon in June
    assert site.read("bess1")["capacity_kwh"] == 200.0
    assert site.read("bms1")["soc_pct"] == site.read("bess1")["soc_pct"]  # same pack
    assert 0.0 < _p(site, "load1") <= 40.0


def test_meter_is_the_power_balance_of_the_site() -> None:
    site = _site({"seed": 4, "devices": {"ev1": {"sessions": [SESSION]}}})
    site.write("bess1", "p_set_kw", -30.0)
    for _ in range(3):
        site.step(30)
        r = {d: site.read(d) for d in site.models}
        expected = (_p(site, "load1") + _p(site, "ev1") - _p(site, "pv1") - _p(site, "wt1")
                    - _p(site, "bess1"))
        assert r["m1"]["p_kw"] == pytest.approx(expected, abs=1e-9)
        assert r["ev1"]["p_kw"] == pytest.approx(11.0) and r["bess1"]["p_kw"] == -30.0
        phases = float(r["m1"]["p_l1_kw"]) + float(r["m1"]["p_l2_kw"]) + float(
            r["m1"]["p_l3_kw"])
        assert phases == pytest.approx(float(r["m1"]["p_kw"]))
        for ph in ("l1", "l2", "l3"):
            v = float(r["m1"][f"v_{ph}_v"])
            assert 220.0 < v < 240.0
            assert float(r["m1"][f"i_{ph}_a"]) == pytest.approx(
                abs(float(r["m1"][f"p_{ph}_kw"])) * 1000 / (v * 0.97))
        assert 49.9 < float(r["m1"]["f_hz"]) < 50.1
    e_before = float(site.read("m1")["e_export_kwh"]) + float(site.read("m1")["e_import_kwh"])
    assert e_before > 0.0


def test_same_seed_same_site_different_seed_differs() -> None:
    def run(seed: int) -> list[float]:
        site = _site({"seed": seed, "weather": {"cloudiness": 0.5}})
        out = []
        for _ in range(20):
            site.step(120)
            out.append(float(site.read("m1")["p_kw"]))
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_grid_loss_blacks_out_a_site_without_grid_forming_battery() -> None:
    site = _site()
    site.write("bess1", "p_set_kw", 20.0)
    site.step(60)
    assert site.grid_available and _p(site, "m1") != 0.0
    site.set_grid(False)
    site.step(60)
    m = site.read("m1")
    assert (m["p_kw"], m["v_v"], m["f_hz"], m["i_l1_a"]) == (0.0, 0.0, 0.0, 0.0)
    assert site.read("pv1")["state"] == "off" and _p(site, "pv1") == 0.0
    assert _p(site, "load1") == 0.0 and _p(site, "bess1") == 0.0
    assert site.read("pv1")["v_v"] == 0.0
    site.set_grid(True)
    site.step(60)
    assert _p(site, "pv1") > 0.0 and float(site.read("m1")["v_v"]) > 200.0
    assert _p(site, "bess1") == 20.0


def test_open_breaker_islands_site_and_a_grid_forming_battery_carries_it() -> None:
    night = datetime(2025, 6, 21, 22, 0, tzinfo=UTC).timestamp()
    site = _site({"devices": {"bess1": {"grid_forming": True}, "wt1": {"mean_speed_ms": 2.0}}},
                 start=night)
    site.step(60)
    assert site.write("br1", "trip", True) is True
    site.step(60)
    br, m = site.read("br1"), site.read("m1")
    assert br["closed"] is False and br["trip"] is True and br["tripped"] is False
    assert m["p_kw"] == 0.0 and float(m["v_v"]) > 200.0  # the meter sits on the grid side
    load = _p(site, "load1")
    assert load > 0.0  # the island is alive
    assert _p(site, "bess1") == pytest.approx(load + _p(site, "ev1") - _p(site, "pv1")
                                              - _p(site, "wt1"))
    assert float(site.read("load1")["p_kw"]) > 0 and float(site.read("pv1")["v_v"]) > 200.0
    site.write("br1", "close", True)
    site.step(60)
    assert site.read("br1")["closed"] is True and _p(site, "m1") != 0.0


def test_island_collapses_when_the_battery_cannot_carry_the_load() -> None:
    site = _site({"devices": {"bess1": {"grid_forming": True, "initial_soc_pct": 5.0}}},
                 start=datetime(2025, 6, 21, 22, 0, tzinfo=UTC).timestamp())
    site.set_grid(False)
    site.step(60)  # empty battery: cannot cover the load
    site.step(60)
    assert _p(site, "load1") == 0.0 and site.read("load1")["enabled"] is True
    assert site.read("bess1")["p_kw"] == 0.0
    site.set_grid(True)  # the grid comes back: the site is supplied again
    site.step(60)
    assert _p(site, "load1") > 0.0


def test_island_surplus_curtails_pv() -> None:
    site = _site({"devices": {"bess1": {"grid_forming": True, "initial_soc_pct": 95.0},
                              "load1": {"profile": "constant", "p_kw": 5.0,
                                        "noise_pct": 0.0}}})
    site.set_grid(False)
    site.step(60)
    pv = site.read("pv1")
    assert pv["state"] == "throttled"
    generation = _p(site, "pv1") + _p(site, "wt1")
    assert generation == pytest.approx(5.0 + _p(site, "ev1"))  # full battery absorbs nothing
    assert _p(site, "bess1") == 0.0


def test_breaker_trips_on_over_current() -> None:
    site = SimSite(_cfg(None, {**_dev("br2", "breaker"), "ratings": {"i_max_a": 1.0}}),
                   clock=ManualClock(NOON))
    site.step(60)
    assert site.read("br2")["tripped"] is True and site.read("br2")["closed"] is False
    assert not site.connected


def test_accelerated_clock_runs_a_day_in_seconds() -> None:
    wall = [0.0]
    start = datetime(2025, 6, 21, tzinfo=UTC)
    clock = SimClock(start, speed=3600.0, wall=lambda: wall[0])
    site = SimSite(_cfg({"clock": {"max_step_s": 600}}), clock=clock)
    pv = site.models["pv1"]
    assert isinstance(pv, PvInverter)
    for _ in range(24):
        wall[0] += 1.0  # one wall second = one simulated hour
        site.step()
    assert site.now_s == pytest.approx(start.timestamp() + 86400)
    assert 250.0 < pv.e_total_kwh < 500.0  # 60 kWp on a clear June day
    m = site.models["m1"]
    assert isinstance(m, Meter) and m.e_export_kwh > 100.0


def test_step_splits_long_steps_and_moves_a_manual_clock() -> None:
    a = _site({"clock": {"max_step_s": 60}})
    b = _site({"clock": {"max_step_s": 3600}})
    for s in (a, b):
        s.write("bess1", "p_set_kw", -50.0)
    a.step(3600)
    for _ in range(60):
        b.step(60)
    assert a.clock.now() == NOON + 3600 == a.now_s
    for dev in ("bess1", "pv1", "ev1"):
        assert a.read(dev)["p_kw"] == pytest.approx(b.read(dev)["p_kw"]), dev
    assert a.read("bess1")["soc_pct"] == pytest.approx(b.read("bess1")["soc_pct"])


def test_site_write_feeds_the_watchdog() -> None:
    site = _site({"devices": {"ev1": {"default_p_kw": 3.7, "watchdog_s": 10}}})
    assert site.write("ev1", "p_set_kw", 8.0, wall_s=100.0) == 8.0
    site.write("bess1", "p_set_kw", 10.0, wall_s=100.0)
    assert site.check_watchdogs(105.0) == []
    assert site.check_watchdogs(111.0) == ["ev1"]
    assert site.read("ev1")["p_set_kw"] == 3.7
    assert site.check_watchdogs(161.0) == ["bess1"]
    assert site.read("bess1")["p_set_kw"] == 0.0
    ev = site.models["ev1"]
    assert isinstance(ev, Evse) and isinstance(site.models["bess1"], Battery)


def test_two_hundred_devices_build_and_step() -> None:
    extra = [_dev(f"pv{i}", "pv_inverter", kwp=10.0) for i in range(2, 60)]
    extra += [_dev(f"ev{i}", "evse", p_max_kw=22.0) for i in range(2, 60)]
    extra += [_dev(f"bess{i}", "bess", capacity_kwh=50.0) for i in range(2, 40)]
    extra += [_dev(f"load{i}", "load") for i in range(2, 40)]
    site = SimSite(_cfg({"devices": {f"ev{i}": {"random_sessions": {"per_day": 1}}
                                     for i in range(2, 60)}}, *extra),
                   clock=ManualClock(NOON))
    assert len(site.models) >= 200
    for _ in range(20):
        site.step(1.0)
    assert float(site.read("m1")["p_kw"]) == pytest.approx(site.balance_kw())


# --- settings ------------------------------------------------------------------------------

YAML = """\
site: {name: s, latitude: 48.1, longitude: 11.6}
gateways: [{id: gw1}]
connections: [{id: c1, type: modbus_tcp, host: 127.0.0.1}]
devices:
  - {id: pv1, nature: pv_inverter, template: t, connection: c1}
  - {id: bess1, nature: bess, template: t, connection: c1}
  - {id: ev1, nature: evse, template: t, connection: c1}
simulation:
  seed: 7
  clock: {start: "2025-06-21T06:00:00Z", speed: 600}
  weather: {model: haurwitz, cloudiness: 0.2}
  devices:
    bess1: {initial_soc_pct: 80, grid_forming: true}
    ev1:
      sessions:
        - {arrival: "08:00", departure: "17:30", energy_kwh: 20, v2g: true}
"""


def test_simulation_settings_load_and_drive_the_site() -> None:
    src = load_yaml_text(YAML, "site.yaml")
    cfg = parse_model(SiteConfig, src)
    settings = load_simulation_settings(cfg, src)
    assert isinstance(settings, SimulationSettings)
    assert settings.seed == 7 and settings.clock.speed == 600
    site = SimSite(cfg, settings, clock=ManualClock(settings.clock.start))
    assert site.read("bess1")["soc_pct"] == 80.0
    site.step(3 * 3600)  # 09:00 UTC = 11:00 local: the daily car is there
    assert site.read("ev1")["connected"] is True and site.read("ev1")["v2g"] is False


@pytest.mark.parametrize(("body", "where", "message"), [
    ("  seed: -1\n", "site.yaml:9:9: simulation.seed", "greater than or equal to 0"),
    ("  wether: {}\n", "site.yaml:9:3: simulation.wether", "unknown key"),
    ("  devices:\n    ghost: {}\n", "site.yaml:10:5: simulation.devices.ghost",
     "no device 'ghost'"),
    ("  devices:\n    pv1: {initial_soc_pct: 50}\n",
     "site.yaml:10:11: simulation.devices.pv1.initial_soc_pct", "unknown key"),
    ("  devices:\n    bess1: {soc_min_pct: 90, soc_max_pct: 80}\n",
     "site.yaml:10:12: simulation.devices.bess1", "must be below"),
    ("  devices:\n    ev1:\n      sessions: [{arrival: '8 am', departure: '09:00', "
     "energy_kwh: 5}]\n", "site.yaml:11:28: simulation.devices.ev1.sessions[0].arrival",
     "'HH:MM'"),
])
def test_simulation_errors_point_at_the_file_position(body: str, where: str,
                                                      message: str) -> None:
    head = YAML.split("simulation:\n")[0] + "simulation:\n"
    src = load_yaml_text(head + body, "site.yaml")
    cfg = parse_model(SiteConfig, src)
    with pytest.raises(SourceError) as err:
        load_simulation_settings(cfg, src)
    text = str(err.value)
    assert text.startswith(where), text
    assert message in text


def test_settings_errors_without_a_source_still_name_the_path() -> None:
    cfg = _cfg({"devices": {"m1": {"measures": ["br1"]}, "bms1": {"battery": "pv1"}}})
    with pytest.raises(SourceError) as err:
        load_simulation_settings(cfg)
    text = str(err.value)
    assert "simulation.devices.m1.measures[0]: 'br1' is a breaker" in text
    assert "simulation.devices.bms1.battery: 'pv1' is not a bess device" in text


@pytest.mark.parametrize("ev_sim, safe_kw", [
    ({}, 6.0 * 3 * 230.0 / 1000.0),  # the minimum charging current on three phases
    ({"phases": 1, "min_current_a": 8.0}, 8.0 * 230.0 / 1000.0),
    ({"fallback_p_kw": 0}, 0.0),  # configured to stop charging
], ids=["6A-3ph", "8A-1ph", "stop"])
def test_silent_gateway_makes_the_charger_fall_back_to_its_safe_power_not_full(
        ev_sim: dict[str, Any], safe_kw: float) -> None:
    car = {**SESSION, "p_max_kw": 22.0, "energy_kwh": 60.0, "capacity_kwh": 100.0}
    cfg = _cfg({"devices": {"ev22": {"watchdog_s": 10, "sessions": [car], **ev_sim}}},
               _dev("ev22", "evse", p_max_kw=22.0))
    site = SimSite(cfg, clock=ManualClock(NOON))
    site.step(60)
    assert _p(site, "ev22") == pytest.approx(22.0)  # before any gateway: its rating
    assert site.write("ev22", "p_set_kw", 11.0, wall_s=100.0) == 11.0
    site.step(60)
    assert _p(site, "ev22") == pytest.approx(11.0)
    assert site.check_watchdogs(109.0) == []
    assert site.check_watchdogs(110.5) == ["ev22"]  # the gateway went silent
    site.step(60)
    assert site.read("ev22")["p_set_kw"] == pytest.approx(safe_kw)
    assert _p(site, "ev22") == pytest.approx(safe_kw)
