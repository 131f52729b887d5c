"""Device physics of the simulator: clock, PV, battery, EVSE, load, watchdogs, clamping."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from gateway.model import NATURES
from sim_devices.clock import ManualClock, SimClock
from sim_devices.physics.base import AcBus, model_rng
from sim_devices.physics.battery import ALARM_WATCHDOG, Battery, Pack
from sim_devices.physics.evse import Evse
from sim_devices.physics.load import Load
from sim_devices.physics.profiles import LoadProfile
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.weather import Weather
from sim_devices.settings import BatterySim, EvseSim, EvSession, LoadSim, WeatherSettings

JUNE_21 = datetime(2025, 6, 21, tzinfo=UTC).timestamp()
DEC_21 = datetime(2025, 12, 21, tzinfo=UTC).timestamp()
MUNICH = (48.14, 11.58, "Europe/Berlin")


def _weather(**kw: object) -> Weather:
    return Weather(*MUNICH, WeatherSettings.model_validate(kw), seed=3)


def _day_energy(pv: PvInverter, start: float, step_s: float = 300.0) -> tuple[float, float]:
    peak = 0.0
    e0 = pv.e_total_kwh
    t = start
    while t < start + 86400:
        t += step_s
        pv.step(t, step_s)
        peak = max(peak, pv.p_kw)
    return pv.e_total_kwh - e0, peak


# --- clock ---------------------------------------------------------------------------------

def test_sim_clock_runs_at_its_speed_on_the_wall_clock() -> None:
    wall = [1000.0]
    clock = SimClock(datetime(2025, 6, 21, 6, 0, tzinfo=UTC), speed=3600, wall=lambda: wall[0])
    assert clock.now() == JUNE_21 + 6 * 3600
    wall[0] += 2.5
    assert clock.now() == JUNE_21 + 6 * 3600 + 2.5 * 3600
    assert clock.datetime() == datetime(2025, 6, 21, 8, 30, tzinfo=UTC)
    clock.set_speed(60)  # no jump when the speed changes
    assert clock.now() == JUNE_21 + 8.5 * 3600
    wall[0] += 1
    assert clock.now() == JUNE_21 + 8.5 * 3600 + 60
    with pytest.raises(ValueError):
        SimClock(0, speed=0)


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(JUNE_21)
    assert clock.advance(90) == JUNE_21 + 90
    assert clock.datetime().tzinfo is UTC
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(JUNE_21)


# --- PV ------------------------------------------------------------------------------------

def test_clear_sky_day_gives_plausible_pv_energy_for_kwp_and_latitude() -> None:
    summer = PvInverter("pv", AcBus(), _weather(), kwp=10.0, p_rated_kw=10.0)
    e_summer, peak = _day_energy(summer, JUNE_21)
    # Munich, clear 21 June, 36 deg south: ~6-8 kWh per kWp; peak below kWp (losses, heat)
    assert 55.0 < e_summer < 80.0
    assert 6.5 < peak < 10.0
    winter = PvInverter("pv", AcBus(), _weather(), kwp=10.0, p_rated_kw=10.0)
    e_winter, _ = _day_energy(winter, DEC_21)
    assert 10.0 < e_winter < 40.0
    assert e_winter < e_summer / 2
    # the TMY year has clouds: less than the clear sky on the same day
    tmy = PvInverter("pv", AcBus(), _weather(model="tmy"), kwp=10.0, p_rated_kw=10.0)
    e_tmy = sum(_day_energy(tmy, JUNE_21 + d * 86400)[0] for d in range(5))
    summer5 = PvInverter("pv", AcBus(), _weather(), kwp=10.0, p_rated_kw=10.0)
    e_clear5 = sum(_day_energy(summer5, JUNE_21 + d * 86400)[0] for d in range(5))
    assert 0 < e_tmy < e_clear5


def test_pv_is_dark_at_night_and_limited_by_p_limit_pct() -> None:
    pv = PvInverter("pv", AcBus(), _weather(), kwp=10.0, p_rated_kw=10.0)
    pv.step(JUNE_21 + 600, 600)  # 00:10 UTC
    assert pv.p_kw == 0.0 and pv.read_points()["state"] == "sleeping"
    assert pv.write_point("p_limit_pct", 150) == 100.0
    assert pv.write_point("p_limit_pct", -3) == 0.0
    assert pv.write_point("p_limit_pct", 30) == 30.0
    noon = JUNE_21 + 11 * 3600
    pv.step(noon, 60)
    assert pv.p_kw == pytest.approx(3.0)
    assert pv.read_points()["state"] == "throttled"
    pv.write_point("p_limit_enabled", False)
    pv.step(noon + 60, 60)
    assert pv.p_kw > 6.0 and pv.read_points()["state"] == "mppt"


def test_cloudiness_reduces_energy_and_is_deterministic_per_seed() -> None:
    clear = _day_energy(PvInverter("pv", AcBus(), _weather(), 10.0, 10.0), JUNE_21)[0]
    a = _day_energy(PvInverter("pv", AcBus(), _weather(cloudiness=0.7), 10.0, 10.0), JUNE_21)[0]
    b = _day_energy(PvInverter("pv", AcBus(), _weather(cloudiness=0.7), 10.0, 10.0), JUNE_21)[0]
    assert a == b
    assert 0.2 * clear < a < 0.85 * clear


# --- battery -------------------------------------------------------------------------------

def _battery(**kw: object) -> Battery:
    sim = BatterySim.model_validate({"initial_soc_pct": 50.0, "initial_temp_c": 20.0, **kw})
    return Battery("b", AcBus(), Pack(100.0, 50.0, 50.0, sim, None))


def test_battery_soc_integrates_with_charge_and_discharge_efficiency() -> None:
    bat = _battery(charge_efficiency=0.95, discharge_efficiency=0.9)
    t = JUNE_21
    assert bat.write_point("p_set_kw", -20.0) == -20.0
    for _ in range(60):
        t += 60
        bat.step(t, 60)
    pts = bat.read_points()
    assert pts["soc_pct"] == pytest.approx(50.0 + 20 * 0.95)  # 19 kWh into 100 kWh
    assert pts["p_kw"] == pytest.approx(-20.0)
    assert pts["e_charged_kwh"] == pytest.approx(20.0)
    assert pts["state"] == "charging"
    assert pts["i_dc_a"] < 0
    bat.write_point("p_set_kw", 18.0)
    for _ in range(4):
        t += 900
        bat.step(t, 900)
    assert bat.read_points()["soc_pct"] == pytest.approx(69.0 - 18.0 / 0.9, abs=0.01)  # ageing
    assert bat.read_points()["e_discharged_kwh"] == pytest.approx(18.0)
    assert bat.read_points()["soh_pct"] < 100.0


def test_battery_stops_at_soc_limits_and_clamps_setpoints() -> None:
    bat = _battery(soc_max_pct=90.0, soc_min_pct=10.0)
    assert bat.write_point("p_set_kw", 1e6) == 50.0  # discharge rating
    assert bat.write_point("p_set_kw", -1e6) == -50.0  # charge rating
    t = JUNE_21
    for _ in range(10):  # far more energy than the room left
        t += 1800
        bat.step(t, 1800)
    pts = bat.read_points()
    assert pts["soc_pct"] == pytest.approx(90.0, abs=1e-9)
    assert pts["p_kw"] == 0.0 and pts["p_charge_max_kw"] == 0.0
    assert bat.write_point("p_set_kw", -10.0) == 0.0  # full: refuses to charge
    assert bat.write_point("p_set_kw", 50.0) == 50.0
    for _ in range(10):
        t += 1800
        bat.step(t, 1800)
    pts = bat.read_points()
    assert pts["soc_pct"] == pytest.approx(10.0, abs=1e-9)
    assert pts["p_discharge_max_kw"] == 0.0 and pts["p_kw"] == 0.0
    assert bat.write_point("p_set_kw", 5.0) == 0.0  # empty: refuses to discharge
    # 80 % of a (slightly aged) 100 kWh left the cells, 95 % of it reached AC
    assert pts["e_discharged_kwh"] == pytest.approx(80.0 * 0.95, rel=1e-3)


def test_battery_heats_derates_and_shows_cell_voltages() -> None:
    bat = _battery(initial_soc_pct=10.0, thermal_resistance_k_per_kw=40.0,
                   thermal_capacity_kj_per_k=100.0)
    rest = bat.read_points()
    assert float(rest["cell_v_max_v"]) > float(rest["cell_v_min_v"])
    bat.write_point("p_set_kw", -40.0)
    t = JUNE_21
    bat.step(t + 10, 10)
    charging = bat.read_points()
    assert float(charging["cell_v_min_v"]) > float(rest["cell_v_min_v"])  # IR rise
    for _ in range(60):
        t += 60
        bat.step(t, 60)
    hot = bat.read_points()
    # 40 kW x 5 % loss x 40 K/kW would be +80 K; derating above 45 degC settles near 51
    assert 45.0 < float(hot["cell_temp_max_c"]) < 60.0
    assert hot["state"] == "charging"
    assert float(hot["p_charge_max_kw"]) < 40.0
    assert -float(hot["p_kw"]) < 40.0  # the setpoint is no longer met


# --- watchdog ------------------------------------------------------------------------------

def test_watchdog_reverts_to_safe_defaults_once_on_wall_time() -> None:
    bat = _battery(watchdog_s=30.0)
    assert not bat.check_watchdog(1e9)  # never written: nothing to revert
    bat.write_point("p_set_kw", 25.0)
    bat.note_comm_write(100.0)
    assert not bat.check_watchdog(129.0)
    assert bat.read_points()["p_set_kw"] == 25.0
    assert bat.check_watchdog(130.5)
    assert bat.read_points()["p_set_kw"] == 0.0
    assert int(bat.read_points()["alarms"]) & ALARM_WATCHDOG
    assert not bat.check_watchdog(500.0)  # once
    bat.write_point("p_set_kw", 10.0)
    bat.note_comm_write(600.0)
    assert not int(bat.read_points()["alarms"]) & ALARM_WATCHDOG
    assert bat.write_point("watchdog_s", 0) == 0.0  # 0 = off
    assert not bat.check_watchdog(10_000.0)
    assert bat.read_points()["p_set_kw"] == 10.0

    pv = PvInverter("pv", AcBus(), _weather(), 10.0, 10.0)
    pv.write_point("p_limit_pct", 20)
    pv.note_comm_write(0.0)
    assert pv.check_watchdog(61.0) and pv.p_limit_pct == 100.0
    with pytest.raises(ValueError, match="no point 'watchdog_s'"):
        pv.write_point("watchdog_s", 10)

    ev = Evse("ev", AcBus(), 11.0, "UTC", sim=EvseSim(default_p_kw=4.0, watchdog_s=5.0))
    ev.write_point("p_set_kw", 11.0)
    ev.note_comm_write(0.0)
    assert ev.check_watchdog(5.0) and ev.read_points()["p_set_kw"] == 4.0


def test_writes_are_checked_like_hardware() -> None:
    bat = _battery()
    with pytest.raises(ValueError, match="no point"):
        bat.write_point("bogus", 1.0)
    with pytest.raises(ValueError, match="read-only"):
        bat.write_point("soc_pct", 80.0)
    with pytest.raises(ValueError, match="number"):
        bat.write_point("p_set_kw", "fast")
    with pytest.raises(ValueError, match="number"):
        bat.write_point("p_set_kw", True)
    with pytest.raises(ValueError, match="finite"):
        bat.write_point("p_set_kw", float("nan"))
    load = Load("l", AcBus(), LoadProfile("constant", "UTC", p_kw=5.0), model_rng(0, "l"))
    with pytest.raises(ValueError, match="true/false"):
        load.write_point("enabled", 2)
    assert load.write_point("enabled", 0) is False


# --- EVSE ----------------------------------------------------------------------------------

def _evse(sessions: list[dict[str, object]], **kw: object) -> Evse:
    sim = EvseSim.model_validate({"sessions": sessions, **kw})
    return Evse("ev", AcBus(), 11.0, "UTC", seed=1, sim=sim)


def _run(model: Evse | Load, start: float, hours: float, step_s: float = 300.0) -> None:
    t = start
    while t < start + hours * 3600:
        t += step_s
        model.step(t, step_s)


def test_ev_session_gets_its_energy_and_leaves_at_departure() -> None:
    ev = _evse([{"arrival": "2025-06-21T08:00:00Z", "departure": "2025-06-21T17:00:00Z",
                 "energy_kwh": 20.0, "capacity_kwh": 50.0, "initial_soc_pct": 30.0}])
    _run(ev, JUNE_21, 8.5)  # 08:30
    pts = ev.read_points()
    assert pts["connected"] is True and pts["state"] == "C"
    assert pts["p_kw"] == pytest.approx(11.0)
    assert pts["e_session_kwh"] == pytest.approx(5.5)
    assert pts["ev_soc_pct"] == pytest.approx(30.0 + 5.5 / 50 * 100)
    _run(ev, JUNE_21 + 8.5 * 3600, 8.0)  # 16:30: done, still plugged
    pts = ev.read_points()
    assert pts["state"] == "B" and pts["p_kw"] == 0.0
    assert pts["e_session_kwh"] == pytest.approx(20.0)
    assert pts["ev_soc_pct"] == pytest.approx(70.0)
    _run(ev, JUNE_21 + 16.5 * 3600, 1.0)
    pts = ev.read_points()
    assert pts["state"] == "A" and pts["connected"] is False
    assert [s.delivered_kwh for s in ev.completed] == [pytest.approx(20.0)]
    assert pts["e_total_kwh"] == pytest.approx(20.0)


def test_discharge_needs_a_v2g_charger_and_a_v2g_car() -> None:
    session = {"arrival": "2025-06-21T08:00:00Z", "departure": "2025-06-21T17:00:00Z",
               "energy_kwh": 10.0, "initial_soc_pct": 60.0}
    plain_car = _evse([session], v2g_capable=True)
    _run(plain_car, JUNE_21, 9.0)
    assert plain_car.write_point("p_set_kw", -7.0) == 0.0
    assert plain_car.read_points()["v2g"] is False
    v2g_car = _evse([{**session, "v2g": True}], v2g_capable=True)
    assert v2g_car.write_point("p_set_kw", -7.0) == 0.0  # no car yet
    _run(v2g_car, JUNE_21, 9.0)
    assert v2g_car.read_points()["v2g"] is True
    soc0 = float(v2g_car.read_points()["ev_soc_pct"])
    assert v2g_car.write_point("p_set_kw", -7.0) == -7.0
    assert v2g_car.write_point("p_set_kw", -70.0) == -11.0
    _run(v2g_car, JUNE_21 + 9 * 3600, 1.0)
    pts = v2g_car.read_points()
    assert pts["p_kw"] == pytest.approx(-11.0) and pts["state"] == "C"
    assert float(pts["ev_soc_pct"]) == pytest.approx(soc0 - 11.0 / 60 * 100)
    charger_only = _evse([{**session, "v2g": True}], v2g_capable=False)
    _run(charger_only, JUNE_21, 9.0)
    assert charger_only.write_point("p_set_kw", -5.0) == 0.0
    assert charger_only.write_point("p_set_kw", 50.0) == 11.0


def test_daily_and_random_sessions_are_planned_from_the_seed() -> None:
    daily = _evse([{"arrival": "18:00", "departure": "07:00", "energy_kwh": 15.0}])
    _run(daily, JUNE_21, 72.0, 900.0)
    # the car that came on the 20th leaves on the 21st, then the 22nd and the 23rd
    assert len(daily.completed) == 3
    assert daily.read_points()["connected"] is True

    def visits(seed: int) -> list[tuple[float, float]]:
        ev = Evse("ev", AcBus(), 11.0, "Europe/Berlin", seed=seed,
                  sim=EvseSim.model_validate({"random_sessions": {"per_day": 2.0}}))
        _run(ev, JUNE_21, 24.0 * 10, 900.0)
        return [(s.arrival_s, s.delivered_kwh) for s in ev.completed]

    assert visits(5) == visits(5)
    assert visits(5) != visits(6)
    assert len(visits(5)) >= 5


# --- load ----------------------------------------------------------------------------------

def test_load_profile_year_energy_matches_configured_kwh() -> None:
    for name, kwh in (("H25", 4_000.0), ("G25", 120_000.0)):
        prof = LoadProfile(name, "Europe/Berlin", annual_kwh=kwh)
        start = datetime(2025, 1, 1, tzinfo=UTC).timestamp() - 3600  # local new year
        ts = start + 900.0 * np.arange(35040) + 450.0
        p = prof.p_kw_array(ts)
        assert p.sum() * 0.25 == pytest.approx(kwh, rel=1e-6)
        assert prof.p_kw(float(ts[1234])) == pytest.approx(p[1234])
    g25 = LoadProfile("G25", "Europe/Berlin", annual_kwh=100_000.0)
    wed_noon = datetime(2025, 6, 18, 10, tzinfo=UTC).timestamp()
    sun_noon = datetime(2025, 6, 22, 10, tzinfo=UTC).timestamp()
    assert g25.p_kw(wed_noon) > 2 * g25.p_kw(sun_noon)  # businesses close on Sunday


def test_load_follows_profile_with_small_noise_and_can_be_shed() -> None:
    prof = LoadProfile("H25", "Europe/Berlin", annual_kwh=3_650.0)
    load = Load("l", AcBus(), prof, model_rng(0, "l"), LoadSim(profile="H25", noise_pct=3.0))
    e = 0.0
    t = JUNE_21
    for _ in range(7 * 96):
        t += 900
        load.step(t, 900)
        e += load.p_kw * 0.25
    expected = float(prof.p_kw_array(JUNE_21 + 450 + 900.0 * np.arange(7 * 96)).sum()) * 0.25
    assert e == pytest.approx(expected, rel=0.05)
    assert set(load.read_points()) == set(NATURES[load.nature])
    load.write_point("enabled", False)
    load.step(t + 60, 60)
    assert load.read_points()["p_kw"] == 0.0


def test_ev_session_settings_reject_inconsistent_times() -> None:
    with pytest.raises(ValueError, match="after arrival"):
        EvSession.model_validate({"arrival": "2025-06-21T10:00:00", "departure":
                                  "2025-06-21T09:00:00", "energy_kwh": 5})
    with pytest.raises(ValueError, match="HH:MM"):
        EvSession.model_validate({"arrival": "25:00", "departure": "07:00", "energy_kwh": 5})
