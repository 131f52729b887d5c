"""The scheduler: from the site's state, EV sessions, tariff and forecasts to a Plan.

``Scheduler.problem`` gathers the inputs (cheap, on the event loop: a snapshot of the
latest good readings); ``Scheduler.solve`` runs the LP (seconds at most, in a worker
thread). Devices without good readings are planned around, not waited for. The forecast
comes from the analytics forecaster when one is given and ready, else from the simple
profile forecast; the plan's status says which, and every fallback says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from gateway.config.models import SiteConfig
from gateway.control.forecast_simple import Forecast, SimpleForecaster
from gateway.control.plan import Plan
from gateway.control.scheduler_config import (
    DEFAULT_TARIFF,
    SchedulerSettings,
    Tariff,
    step_floor,
)
from gateway.control.scheduler_lp import (
    BatteryInput,
    EvInput,
    ProblemInput,
    SolveResult,
    fallback,
    solve,
)
from gateway.control.sessions import EvSession
from gateway.model import Nature
from gateway.state import SiteState

log = logging.getLogger("autogrid.scheduler")

EV_CAPACITY_GUESS_KWH = 60.0  # a car's battery when the charger does not say
# (start_s, step_s, n, now_s, load_now_kw, pv_now_kw) -> Forecast
ForecastFn = Callable[[float, float, int, float, float | None, float | None], Forecast]


def site_tariff(cfg: SiteConfig) -> tuple[Tariff, str]:
    """The tariff to plan against, and where it came from (for headers and logs)."""
    if cfg.tariff is not None:
        return cfg.tariff, "site tariff"
    return DEFAULT_TARIFF, "default time-of-use tariff (the config has none)"


def scheduler_settings(cfg: SiteConfig) -> SchedulerSettings:
    return cfg.scheduler if cfg.scheduler is not None else SchedulerSettings()


@dataclass(frozen=True)
class Snapshot:
    """What one solve needs from the site now (good readings only)."""

    now_s: float
    batteries: tuple[BatteryInput, ...]
    load_now_kw: float | None
    pv_now_kw: float | None


class Scheduler:
    """Plans battery and EV power for the next horizon; see the module doc."""

    def __init__(self, cfg: SiteConfig, settings: SchedulerSettings | None = None,
                 forecaster: SimpleForecaster | None = None,
                 forecast_fn: ForecastFn | None = None) -> None:
        self.cfg = cfg
        self.settings = settings if settings is not None else scheduler_settings(cfg)
        self.tariff, self.tariff_source = site_tariff(cfg)
        self.simple = forecaster if forecaster is not None else SimpleForecaster(cfg)
        self.forecast_fn = forecast_fn  # analytics, when available; None -> simple
        self.last: SolveResult | None = None
        self._forecast_note = ""
        self._devices = {d.id: d for d in cfg.devices if d.enabled}
        st = cfg.control.strategies if cfg.control is not None else None
        self.reserve_soc_pct = max(self.settings.battery_reserve_soc_pct,
                                   st.self_consumption.reserve_soc_pct if st else 0.0)
        self.v2g_min_soc_pct = st.v2g.min_soc_pct if st else 30.0

    # --- inputs (event loop) ------------------------------------------------------------
    def snapshot(self, state: SiteState, now_s: float) -> Snapshot:
        bats = []
        for dev in state.of_nature(Nature.BESS):
            cfg_dev = self._devices.get(dev.device_id)
            soc = dev.value("soc_pct", now_s)
            if cfg_dev is None or not isinstance(soc, int | float):
                continue  # offline or unknown: planned around
            r = cfg_dev.ratings
            cap_read = dev.value("capacity_kwh", now_s)
            cap = float(cap_read) if isinstance(cap_read, int | float) and cap_read > 0 else (
                r.capacity_kwh or 0.0)
            if cap <= 0:
                continue
            bats.append(BatteryInput(
                dev.device_id, cap, float(soc),
                p_charge_max_kw=r.p_charge_max_kw or r.p_max_kw or cap * 0.5,
                p_discharge_max_kw=r.p_discharge_max_kw or r.p_max_kw or cap * 0.5,
                reserve_soc_pct=self.reserve_soc_pct))
        summary = state.summary(now_s)
        load = _num(summary.get("load_kw"))
        pv = _num(summary.get("pv_kw"))
        wind = _num(summary.get("wind_kw"))
        gen = None if pv is None and wind is None else (pv or 0.0) + (wind or 0.0)
        return Snapshot(now_s, tuple(bats), load, gen)

    def sessions_from(self, book_sessions: Iterable[EvSession], now_s: float) -> list[EvInput]:
        """EvInputs from the controller's session registry (gateway.control.sessions)."""
        out = []
        for s in book_sessions:
            dev = self._devices.get(s.charger)
            if dev is None or s.ended_s is not None or s.departure_s <= now_s:
                continue
            r = dev.ratings
            p_max = r.p_charge_max_kw or r.p_max_kw or 11.0
            if s.car_max_kw is not None and s.car_max_kw > 0:  # what the car was seen to take
                p_max = min(p_max, s.car_max_kw)
            v2g_kw = (r.p_discharge_max_kw or 0.0) if (s.v2g_allowed and s.v2g_capable) else 0.0
            v2g_kwh = 0.0
            if v2g_kw > 0 and s.soc_pct is not None:
                floor = max(s.departure_soc_pct, self.v2g_min_soc_pct)
                v2g_kwh = max(0.0, s.soc_pct - floor) / 100.0 * EV_CAPACITY_GUESS_KWH
            out.append(EvInput(s.charger, s.arrival_s, s.departure_s, s.need_kwh, p_max,
                               s.priority, v2g_kw if v2g_kwh > 0 else 0.0, v2g_kwh,
                               f"{s.charger}@{s.arrival_s:.0f}"))
        return out

    def forecast(self, snap: Snapshot, start_s: float, step_s: float, n: int) -> Forecast:
        if self.forecast_fn is not None:
            try:
                return self.forecast_fn(start_s, step_s, n, snap.now_s, snap.load_now_kw,
                                        snap.pv_now_kw)
            except Exception as exc:  # not trained yet, too little data, ...
                note = f"analytics forecast unavailable ({exc}); using the simple one"
                if note != self._forecast_note:  # say it once, not every few minutes
                    log.info("%s", note)
                    self._forecast_note = note
        return self.simple.forecast(start_s, step_s, n, snap.now_s, snap.load_now_kw,
                                    snap.pv_now_kw)

    def problem(self, snap: Snapshot, evs: Iterable[EvInput]) -> tuple[ProblemInput, str]:
        st = self.settings
        start = step_floor(snap.now_s, st.step_s)
        n = st.n_steps
        fc = self.forecast(snap, start, st.step_s, n)
        imp, exp = self.tariff.prices(start, st.step_s, n, self.cfg.site.timezone)
        grid = self.cfg.site.grid
        evs_now = tuple(replace(e, arrival_s=max(e.arrival_s, snap.now_s)) for e in evs
                        if e.departure_s > snap.now_s)
        p = ProblemInput(start_s=start, step_s=st.step_s, load_kw=fc.load_kw, pv_kw=fc.pv_kw,
                         import_price=imp, export_price=exp,
                         import_limit_kw=grid.import_limit_kw,
                         export_limit_kw=grid.export_limit_kw, batteries=snap.batteries,
                         evs=evs_now, demand_charge_per_kw=self.tariff.demand_charge_per_kw)
        return p, fc.method

    # --- solve (worker thread) ----------------------------------------------------------
    def solve(self, problem: ProblemInput, forecast_method: str, now_s: float) -> SolveResult:
        try:
            res = solve(problem, self.settings.time_limit_s, now_s=now_s)
        except Exception as exc:  # a bug must not stop the controller: fall back, loudly
            log.exception("scheduler failed")
            res = SolveResult(fallback(now_s, f"scheduler error: {exc}"))
        plan = res.plan
        if plan.status == "optimal":
            res.plan = Plan(plan.created_s, plan.steps, f"{plan.solver}; {forecast_method}",
                            plan.status)
            log.debug("plan: cost %.2f over %d steps, solved in %.0f ms", res.cost or 0.0,
                      len(plan.steps), res.solve_ms)
        else:
            log.warning("scheduler: %s; the controller keeps its rule-based strategies",
                        plan.status)
        self.last = res
        return res

    def plan(self, state: SiteState, now_s: float, evs: Iterable[EvInput] = ()) -> SolveResult:
        """Snapshot, problem and solve in one call (tests, the simulate command)."""
        snap = self.snapshot(state, now_s)
        p, method = self.problem(snap, evs)
        return self.solve(p, method, now_s)

    def observe(self, state: SiteState, now_s: float) -> None:
        """Feed the simple forecaster's history with the site's load and PV now."""
        snap_sum = state.summary(now_s)
        load = _num(snap_sum.get("load_kw"))
        pv = _num(snap_sum.get("pv_kw"))
        if load is not None:
            self.simple.history.add(now_s, load, pv)


def _num(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def plan_summary(res: SolveResult | None, now_s: float) -> dict[str, Any]:
    """JSON-able view of the latest plan for the API."""
    if res is None:
        return {"status": "no plan yet"}
    p = res.plan
    step = p.at(now_s)
    return {"status": p.status, "solver": p.solver, "created_s": p.created_s,
            "steps": len(p.steps), "cost": res.cost, "solve_ms": round(res.solve_ms, 1),
            "ev_shortfall_kwh": res.ev_shortfall_kwh,
            "now": None if step is None else {"battery_p_kw": step.battery_p_kw,
                                              "ev_p_kw": step.ev_p_kw,
                                              "grid_p_kw": step.grid_p_kw},
            "grid_p_kw": [round(s.grid_p_kw, 3) for s in p.steps]}
