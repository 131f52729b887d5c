"""The scheduler's LP on small cases one can check by hand, its fallbacks, and its inputs."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gateway.config.models import SiteConfig
from gateway.control.forecast_simple import History, SimpleForecaster
from gateway.control.plan import Plan, PlanStep
from gateway.control.scheduler import Scheduler, plan_summary, site_tariff
from gateway.control.scheduler_config import DEFAULT_TARIFF, Tariff
from gateway.control.scheduler_lp import BatteryInput, EvInput, ProblemInput, solve
from gateway.model import Nature
from gateway.state import DeviceState, SiteState
from tests.waiting import until

H = 3600.0


def _problem(n: int = 8, load: float = 5.0, pv: float = 0.0, **kw: object) -> ProblemInput:
    prices = np.array([0.10] * (n // 2) + [0.50] * (n - n // 2))
    args: dict[str, object] = dict(
        start_s=0.0, step_s=H, load_kw=np.full(n, load), pv_kw=np.full(n, pv),
        import_price=prices, export_price=np.full(n, 0.05), import_limit_kw=20.0,
        export_limit_kw=10.0)
    args.update(kw)
    return ProblemInput(**args)  # type: ignore[arg-type]


def _battery(soc: float = 50.0, **kw: object) -> BatteryInput:
    args: dict[str, object] = dict(id="b", capacity_kwh=20.0, soc_pct=soc, soc_min_pct=10.0,
                                   soc_max_pct=90.0, p_charge_max_kw=10.0,
                                   p_discharge_max_kw=10.0, eta_charge=1.0, eta_discharge=1.0)
    args.update(kw)
    return BatteryInput(**args)  # type: ignore[arg-type]


def _soc_path(steps: tuple[PlanStep, ...], e0: float, eta_c: float = 1.0,
              eta_d: float = 1.0) -> list[float]:
    e, out = e0, []
    for s in steps:
        p = s.battery_p_kw["b"]
        h = (s.end_s - s.start_s) / H
        e += (-p * eta_c if p < 0 else -p / eta_d) * h
        out.append(e)
    return out


def test_arbitrage_charges_cheap_discharges_expensive() -> None:
    res = solve(_problem(batteries=(_battery(),)))
    assert res.plan.status == "optimal"
    bat = [s.battery_p_kw["b"] for s in res.plan.steps]
    assert all(p <= 1e-6 for p in bat[:4])  # cheap hours: charge (or idle), never discharge
    assert sum(-p for p in bat[:4]) == pytest.approx(8.0, abs=1e-4)  # 10 -> 18 kWh (90 %)
    assert all(p >= -1e-6 for p in bat[4:])  # expensive hours: discharge
    assert sum(bat[4:]) == pytest.approx(16.0, abs=1e-4)  # 18 -> 2 kWh (10 %)
    # the whole 5 kW load is met by the battery for 3.2 of the 4 expensive hours
    socs = _soc_path(res.plan.steps, 10.0)
    assert min(socs) >= 2.0 - 1e-6 and max(socs) <= 18.0 + 1e-6
    # cost: 4 x 5 kWh x 0.10 + 8 kWh x 0.10 + (20 - 16) kWh x 0.50 = 4.8, less the end value
    assert res.cost == pytest.approx(0.10 * 28 + 0.50 * 4, abs=1e-4)


def test_plan_never_violates_grid_or_battery_limits() -> None:
    n = 24
    rng = np.random.default_rng(3)
    load = rng.uniform(2.0, 26.0, n)  # above the 20 kW import limit at times
    pv = np.clip(np.sin(np.linspace(0, np.pi, n)) * 30.0, 0.0, None)  # above load + export
    res = solve(_problem(n, load=0.0, pv=0.0, load_kw=load, pv_kw=pv,
                         import_price=np.full(n, 0.3), batteries=(_battery(soc=80.0),)))
    assert res.plan.status == "optimal"
    for t, s in enumerate(res.plan.steps):
        assert -10.0 - 1e-6 <= s.grid_p_kw <= 20.0 + 1e-6
        assert -10.0 - 1e-6 <= s.battery_p_kw["b"] <= 10.0 + 1e-6
        # balance: grid = load - pv + curtailed - battery  (curtailment only reduces pv)
        assert s.grid_p_kw >= load[t] - pv[t] - s.battery_p_kw["b"] - 1e-6
    socs = _soc_path(res.plan.steps, 16.0)
    assert min(socs) >= 2.0 - 1e-6 and max(socs) <= 18.0 + 1e-6


def test_ev_gets_its_energy_by_departure_and_only_while_plugged_in() -> None:
    ev = EvInput("bay1", arrival_s=1.5 * H, departure_s=5.5 * H, energy_kwh=30.0,
                 p_max_kw=11.0, priority="fleet", session_id="s1")
    res = solve(_problem(evs=(ev,)))
    assert res.plan.status == "optimal"
    p = [s.ev_p_kw["bay1"] for s in res.plan.steps]
    assert p[0] == 0.0 and p[6] == 0.0 and p[7] == 0.0  # before arrival, after departure
    assert p[1] <= 5.5 + 1e-6 and p[5] <= 5.5 + 1e-6  # half-hour presence: half the power
    assert sum(p) == pytest.approx(30.0, abs=1e-4)
    assert res.ev_shortfall_kwh["s1"] == pytest.approx(0.0, abs=1e-6)
    assert max(p[4:]) <= p[3] + 1e-6 or sum(p[1:4]) >= 30.0 - 11.0  # cheap hours first


def test_short_capacity_goes_to_the_emergency_vehicle_first() -> None:
    # 20 kW import limit, 5 kW load: 15 kW left for two cars for 2 h = 30 kWh; both want 25
    evs = (EvInput("pub", 0.0, 2 * H, 25.0, 22.0, "public", session_id="pub"),
           EvInput("ems", 0.0, 2 * H, 25.0, 22.0, "emergency", session_id="ems"))
    res = solve(_problem(n=4, evs=evs))
    assert res.plan.status == "optimal"
    assert res.ev_shortfall_kwh["ems"] == pytest.approx(0.0, abs=1e-6)
    assert res.ev_shortfall_kwh["pub"] == pytest.approx(20.0, abs=1e-4)
    assert all(s.grid_p_kw <= 20.0 + 1e-6 for s in res.plan.steps)


def test_v2g_never_takes_more_than_the_car_can_give_and_refills_by_departure() -> None:
    n = 8  # expensive hours 4..7; car here all day, allows 6 kWh of V2G, wants 10 kWh net
    ev = EvInput("bay1", 0.0, n * H, 10.0, 11.0, "public", v2g_kw=11.0, v2g_kwh=6.0,
                 session_id="c")
    prices = np.array([0.10, 0.10, 0.60, 0.60, 0.10, 0.10, 0.60, 0.60])
    res = solve(_problem(n, load=12.0, import_price=prices, evs=(ev,)))
    assert res.plan.status == "optimal"
    p = [s.ev_p_kw["bay1"] for s in res.plan.steps]
    assert min(p) < -1.0  # it does use V2G at the peaks
    cumulative = np.cumsum(p)
    assert cumulative.min() >= -6.0 - 1e-6  # never more than 6 kWh below arrival
    assert cumulative[-1] == pytest.approx(10.0, abs=1e-4)


def test_infeasible_case_falls_back_with_a_reason() -> None:
    res = solve(_problem(load=30.0))  # 30 kW load, 20 kW import limit, no storage
    assert res.plan.status.startswith("fallback: infeasible")
    assert res.plan.steps == () and res.plan.at(0.0) is None
    assert res.cost is None


def test_solver_time_limit_falls_back() -> None:
    n = 96
    evs = tuple(EvInput(f"ev{i}", i * 900.0, (i + 40) * 900.0, 20.0, 11.0, "public",
                        v2g_kw=11.0, v2g_kwh=10.0) for i in range(4))
    res = solve(_problem(n, batteries=(_battery(),), evs=evs), time_limit_s=1e-9)
    assert res.plan.status.startswith("fallback: solver stopped at its limit")
    assert "time limit" in res.plan.status.lower()


def test_bad_inputs_fall_back() -> None:
    p = _problem(load_kw=np.array([1.0, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert solve(p).plan.status == "fallback: load forecast has missing values"


def test_plan_at_finds_the_step() -> None:
    steps = (PlanStep(0.0, 10.0, {}, {}, 1.0), PlanStep(10.0, 20.0, {}, {}, 2.0))
    plan = Plan(0.0, steps, "x", "optimal")
    assert plan.at(-1.0) is None
    assert plan.at(0.0) is steps[0] and plan.at(9.99) is steps[0]
    assert plan.at(10.0) is steps[1]
    assert plan.at(20.0) is None


def test_tariff_periods_wrap_midnight_and_respect_weekdays() -> None:
    t = Tariff.model_validate({
        "import_per_kwh": 0.3, "export_per_kwh": 0.1,
        "periods": [{"from": "22:00", "to": "06:00", "import_per_kwh": 0.2},
                    {"from": "17:00", "to": "21:00", "import_per_kwh": 0.5,
                     "days": ["mon", "tue", "wed", "thu", "fri"]}]})
    tz = "Europe/Berlin"

    def at(y: int, mo: int, d: int, h: int) -> tuple[float, float]:
        return t.price_at(datetime(y, mo, d, h, tzinfo=ZoneInfo(tz)).timestamp(), tz)

    assert at(2025, 6, 18, 23) == (0.2, 0.1)  # Wednesday night
    assert at(2025, 6, 19, 3) == (0.2, 0.1)  # after midnight
    assert at(2025, 6, 18, 18) == (0.5, 0.1)  # weekday evening peak
    assert at(2025, 6, 21, 18) == (0.3, 0.1)  # Saturday: no peak
    assert at(2025, 6, 18, 12) == (0.3, 0.1)


def _cfg(**extra: object) -> SiteConfig:
    body: dict[str, object] = {
        "site": {"name": "t", "timezone": "UTC", "latitude": 48.0, "longitude": 8.0,
                 "grid": {"import_limit_kw": 30, "export_limit_kw": 10}},
        "gateways": [{"id": "gw1"}],
        "connections": [{"id": "c", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            {"id": "m", "nature": "meter", "template": "meter_3ph", "connection": "c"},
            {"id": "pv", "nature": "pv_inverter", "template": "sunspec_inverter",
             "connection": "c", "unit_id": 2, "ratings": {"kwp": 20, "p_max_kw": 20}},
            {"id": "b", "nature": "bess", "template": "generic_bess", "connection": "c",
             "unit_id": 3, "ratings": {"capacity_kwh": 40, "p_max_kw": 20}},
            {"id": "b2", "nature": "bess", "template": "generic_bess", "connection": "c",
             "unit_id": 4, "ratings": {"capacity_kwh": 40, "p_max_kw": 20}},
        ]}
    body.update(extra)
    return SiteConfig.model_validate(body)


def _state(now: float) -> SiteState:
    st = SiteState()
    for dev_id, nature in (("m", Nature.METER), ("pv", Nature.PV_INVERTER),
                           ("b", Nature.BESS), ("b2", Nature.BESS)):
        st.add_device(DeviceState(dev_id, nature, max_age_s=10.0))
    st.update("m", {"p_kw": 8.0}, now)
    st.update("pv", {"p_kw": 0.0}, now)
    st.update("b", {"soc_pct": 50.0, "p_kw": 0.0, "capacity_kwh": 40.0}, now)
    # b2 never answered: offline, so it is planned around
    st.fail("b2", "timeout", now)
    return st


def test_scheduler_plans_from_site_state_and_tariff() -> None:
    cfg = _cfg(tariff={"import_per_kwh": 0.40, "periods": [
        {"from": "00:00", "to": "04:00", "import_per_kwh": 0.10}]})
    # a winter night: the PV never covers the 8 kW load, so cheap night energy pays
    now = datetime(2025, 12, 21, 0, 7, tzinfo=ZoneInfo("UTC")).timestamp()
    sch = Scheduler(cfg)
    res = sch.plan(_state(now), now)
    plan = res.plan
    assert plan.status == "optimal", plan.status
    assert "persistence" in plan.solver  # no history yet: the present load held flat
    assert len(plan.steps) == 96 and plan.steps[0].start_s == now - 7 * 60
    assert set(plan.steps[0].battery_p_kw) == {"b"}  # the offline battery is left out
    assert plan.at(now) is plan.steps[0]
    cheap = [s.battery_p_kw["b"] for s in plan.steps[:16]]  # 00:00-04:00 at 0.10
    assert max(cheap) <= 1e-6  # the cheap night only charges: 20 -> 38 kWh (95 %)
    assert -sum(cheap) * 0.25 == pytest.approx(18.0 / 0.95, abs=1e-3)
    assert sum(s.battery_p_kw["b"] for s in plan.steps[16:]) > 0  # used in the day
    assert all(s.grid_p_kw <= 30.0 + 1e-6 for s in plan.steps)
    assert plan_summary(res, now)["status"] == "optimal"
    assert site_tariff(cfg)[1] == "site tariff"
    assert site_tariff(_cfg())[0] is DEFAULT_TARIFF


def test_simple_forecast_persistence_then_profile_and_clear_sky_pv() -> None:
    cfg = _cfg()
    noon = datetime(2025, 6, 21, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    fc = SimpleForecaster(cfg)
    f0 = fc.forecast(noon, 900.0, 96, noon, load_now_kw=7.0, pv_now_kw=None)
    assert np.allclose(f0.load_kw, 7.0) and "persistence" in f0.method
    pv = f0.pv_kw  # steps from noon: sun high first, night at +12 h
    assert pv[0] > 10.0 and pv[48] == 0.0 and pv.max() <= 20.0
    hist = History("UTC")
    for k in range(2 * 96):  # two days: 4 kW by day (06-18 h), 1 kW at night
        t = noon - 2 * 86400 + k * 900.0
        hour = datetime.fromtimestamp(t, ZoneInfo("UTC")).hour
        hist.add(t, 4.0 if 6 <= hour < 18 else 1.0, 0.0)
    f1 = SimpleForecaster(cfg, hist).forecast(noon, 900.0, 96, noon)
    assert "same quarter-hour mean" in f1.method
    assert f1.load_kw[0] == pytest.approx(4.0) and f1.load_kw[40] == pytest.approx(1.0)


async def test_component_plans_off_the_loop_and_hands_the_plan_to_the_controller() -> None:
    from types import SimpleNamespace

    from gateway.control.controller import Controller
    from gateway.control.scheduler_component import SchedulerComponent, build
    from gateway.ports import Ports

    cfg = _cfg(tariff={"import_per_kwh": 0.3})
    controller = Controller(cfg)
    daemon = SimpleNamespace(cfg=cfg, state=_state(time.time()), api=None,
                             ports=Ports(controller=controller))
    comp = build(daemon)  # type: ignore[arg-type]
    assert isinstance(comp, SchedulerComponent)
    await comp.start()
    try:
        # the first plan (a solve takes ms, the worker thread may wait for a busy CPU)
        await until(lambda: comp.last is not None, "the first plan")
        assert comp.last is not None
        assert comp.last.plan.status == "optimal", comp.last.plan.status
        assert controller.plan is comp.last.plan
        summary = comp._api_plan({}, None)
        assert summary["status"] == "optimal" and summary["controller"] == "tracking"
        assert summary["tariff"] == "site tariff" and summary["runs"] >= 1
    finally:
        await comp.stop()
    assert build(SimpleNamespace(cfg=_cfg())) is None  # type: ignore[arg-type]  # no tariff
    off = _cfg(tariff={"import_per_kwh": 0.3}, scheduler={"enabled": False})
    assert build(SimpleNamespace(cfg=off)) is None  # type: ignore[arg-type]


def test_plan_does_not_hoard_energy_for_after_the_horizon() -> None:
    # cheap 0.20 for 4 h, then 0.30 for 4 h, 5 kW load: the battery buys at night what
    # the day uses (20 kWh out at 0.95, so 22.2 kWh in at 0.95), and no more; energy left
    # at the end is worth what buying it back costs, so filling up to keep it does not pay
    n = 8
    prices = np.array([0.20] * 4 + [0.30] * 4)
    big = _battery(soc=10.0, capacity_kwh=100.0, p_charge_max_kw=20.0,
                   p_discharge_max_kw=20.0, eta_charge=0.95, eta_discharge=0.95)
    res = solve(_problem(n, import_price=prices, batteries=(big,), import_limit_kw=40.0))
    assert res.plan.status == "optimal"
    bat = [s.battery_p_kw["b"] for s in res.plan.steps]
    assert -sum(bat[:4]) == pytest.approx(20.0 / 0.95 / 0.95, abs=1e-3)
    socs = _soc_path(res.plan.steps, 10.0, 0.95, 0.95)
    assert socs[-1] == pytest.approx(10.0, abs=1e-3)  # back at the floor: nothing hoarded


def test_cheap_hours_at_one_price_are_used_flat_not_at_full_power_first() -> None:
    # 4 cheap hours at one price: the 24 kWh the expensive hours need are bought evenly
    # (6 kW on top of the 5 kW load), not at the battery's full 20 kW in the first hour
    big = _battery(soc=10.0, capacity_kwh=100.0, p_charge_max_kw=20.0,
                   p_discharge_max_kw=20.0)
    res = solve(_problem(8, load=5.0, batteries=(big,), import_limit_kw=40.0,
                         load_kw=np.array([5.0] * 4 + [6.0] * 4)))
    assert res.plan.status == "optimal"
    grid = [s.grid_p_kw for s in res.plan.steps]
    assert grid[:4] == pytest.approx([11.0] * 4, abs=1e-4)
    assert max(grid) == pytest.approx(11.0, abs=1e-4)


def test_grid_energy_for_the_battery_is_bought_after_the_expected_pv_not_before() -> None:
    # one price all day until the 2 h evening peak (25 kW load, 15 kW of it from the grid
    # whatever happens); PV surplus at hours 2-3 fills half of what the battery gives at
    # the peak, the grid the rest: bought after the PV (if the sky gives more, the next
    # plan buys less), never before it
    n = 8
    prices = np.array([0.30] * 6 + [0.60] * 2)
    load = np.array([5.0] * 6 + [25.0] * 2)
    pv = np.array([0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0])
    bat = _battery(soc=10.0, capacity_kwh=40.0, p_charge_max_kw=5.0,
                   p_discharge_max_kw=10.0)
    res = solve(_problem(n, load_kw=load, pv_kw=pv, import_price=prices, batteries=(bat,),
                         import_limit_kw=40.0))
    assert res.plan.status == "optimal"
    p = [s.battery_p_kw["b"] for s in res.plan.steps]
    assert p[0] >= -1e-6 and p[1] >= -1e-6  # nothing stored before the sun
    assert sum(p[6:]) == pytest.approx(20.0, abs=1e-4)  # the peak runs on the battery
    assert -sum(p[4:6]) == pytest.approx(10.0, abs=1e-4)  # the grid's share, after the PV


def test_sessions_plan_a_car_at_what_it_was_seen_to_take_not_the_wallbox_rating() -> None:
    from gateway.control.sessions import EvSession

    cfg = _cfg(devices=[
        {"id": "m", "nature": "meter", "template": "meter_3ph", "connection": "c"},
        {"id": "wb", "nature": "evse", "template": "generic_evse", "connection": "c",
         "unit_id": 2, "ratings": {"p_max_kw": 22}}])
    s = EvSession("wb", 0.0, 8 * H, 30.0, "public", False, 0.0)
    sch = Scheduler(cfg)
    assert sch.sessions_from([s], 1.0)[0].p_max_kw == 22.0
    s.observe_power(offered_kw=22.0, drawn_kw=11.0)
    assert sch.sessions_from([s], 1.0)[0].p_max_kw == pytest.approx(11.0)


def test_a_session_learns_the_car_battery_and_its_slow_top() -> None:
    from gateway.control.sessions import CAPACITY_GUESS_KWH, EvSession

    s = EvSession("wb", 0.0, 8 * H, 20.0, "public", False, 0.0)
    assert s.hours_to_deliver(10.0) == pytest.approx(2.0)  # SOC unknown: flat
    s.soc_pct = s.soc_first_pct = 50.0
    assert s.capacity_kwh() == CAPACITY_GUESS_KWH
    s.delivered_kwh, s.soc_pct = 4.0, 60.0  # 4 kWh for 10 %: a 40 kWh battery
    assert s.capacity_kwh() == pytest.approx(40.0)
    # 16 kWh more from 60 %: to 100 %, the last 20 % slower and slower
    assert s.hours_to_deliver(10.0) > 16.0 / 10.0 + 0.5
    s.energy_kwh = 12.0  # to 80 % only: no taper
    assert s.hours_to_deliver(10.0) == pytest.approx(0.8)
