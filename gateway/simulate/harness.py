"""Lockstep simulation: the site's physics and the control code on one accelerated clock.

Each step reads every simulated device's points into a SiteState (in process, no Modbus),
runs one control cycle, writes its setpoints into the physics (clamped there as real
devices clamp them), checks the device watchdogs on simulated time, and steps the
physics. The simulated chargers report the car's departure time and wanted energy as an
ISO 15118 car would (``ev_departure_s``, ``ev_energy_req_kwh``). The flows are recorded from the
physics itself (the truth), not from what the controller saw.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from gateway.config.models import SiteConfig
from gateway.control.plan import Plan
from gateway.control.scheduler import Scheduler
from gateway.control.scheduler_lp import EvInput
from gateway.model import PointValue
from gateway.state import DeviceState, SiteState
from sim_devices.clock import ManualClock
from sim_devices.physics.battery import Battery
from sim_devices.physics.evse import Evse, Session
from sim_devices.physics.load import Load
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.site import SimSite
from sim_devices.physics.wind import WindTurbine
from sim_devices.settings import SimulationSettings

if TYPE_CHECKING:
    from gateway.control.controller import CycleResult

RUNS = ("none", "rules", "scheduler")
RUN_TITLES = {"none": "no control", "rules": "rule-based", "scheduler": "with scheduler"}


class Controller(Protocol):
    plan: Plan | None

    def cycle(self, state: SiteState, now: float) -> CycleResult: ...


ControllerFactory = Callable[[SiteConfig], Controller]


@dataclass
class Trace:
    """Step-average flows from the physics (kW; grid + = import, battery + = discharge)."""

    t: list[float] = field(default_factory=list)
    grid: list[float] = field(default_factory=list)
    pv: list[float] = field(default_factory=list)
    battery: list[float] = field(default_factory=list)
    ev: list[float] = field(default_factory=list)
    v2g: list[float] = field(default_factory=list)  # EV discharge, >= 0
    load: list[float] = field(default_factory=list)
    shed: list[float] = field(default_factory=list)  # what shed loads would have drawn
    soc: list[float] = field(default_factory=list)  # capacity-weighted battery SOC %
    stored: list[float] = field(default_factory=list)  # kWh in the batteries
    connected: list[bool] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=float) for k, v in self.__dict__.items()}


@dataclass
class RunResult:
    name: str
    trace: Trace
    step_s: float
    sessions: list[tuple[str, Session]]  # (evse id, session) that arrived in the run
    start_s: float
    end_s: float
    wall_s: float = 0.0
    plans_ok: int = 0
    plans_fallback: list[str] = field(default_factory=list)
    controller_name: str = ""
    stored_start_kwh: float = 0.0
    eta_charge: float = 1.0  # batteries' charge efficiency (capacity-weighted), for kpi
    plan_solver: str = ""  # solver and forecast of the last optimal plan


def day_start(settings: SimulationSettings, tz: str) -> float:
    """Local midnight of the configured start day (or of today)."""
    zone = ZoneInfo(tz)
    start = settings.clock.start
    d = (start.astimezone(zone) if start is not None and start.tzinfo else
         datetime.now(zone) if start is None else start.replace(tzinfo=zone))
    return datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()


class Lockstep:
    """One run of the site for a number of days; see the module doc."""

    def __init__(self, cfg: SiteConfig, settings: SimulationSettings, run: str, days: float,
                 step_s: float, make_controller: ControllerFactory | None,
                 replan_s: float = 900.0, progress: Callable[[str], None] | None = None
                 ) -> None:
        self.cfg = cfg
        self.run = run
        self.step_s = step_s
        self.start_s = day_start(settings, cfg.site.timezone)
        self.end_s = self.start_s + days * 86400.0
        self.clock = ManualClock(self.start_s)
        self.site = SimSite(cfg, settings, clock=self.clock)
        self.state = SiteState()
        for dev in cfg.devices:
            if dev.enabled:
                self.state.add_device(DeviceState(dev.id, dev.nature, 3.0 * step_s,
                                                  role=dev.role,
                                                  capacity_kwh=dev.ratings.capacity_kwh))
        self.controller = (make_controller(cfg) if run != "none" and make_controller else None)
        self.scheduler = Scheduler(cfg) if run == "scheduler" else None
        self.replan_s = replan_s
        self.progress = progress
        self.tz = ZoneInfo(cfg.site.timezone)

    def _read(self, now: float) -> None:
        for dev_id, model in self.site.models.items():
            if dev_id not in self.state.devices:
                continue
            # the simulated chargers report departure and energy wanted (ISO 15118 points)
            values: dict[str, PointValue | None] = dict(model.read_points())
            self.state.update(dev_id, values, now)

    def _apply(self, setpoints: dict[str, dict[str, PointValue]], now: float) -> None:
        for dev_id, points in setpoints.items():
            if dev_id not in self.site.models:
                continue
            for point, value in points.items():
                # refused like a real device would refuse it; the next cycle sees that
                with contextlib.suppress(ValueError):
                    self.site.write(dev_id, point, value, wall_s=now)

    def _sessions(self, now: float) -> list[EvInput]:
        """The EV sessions the controller knows, for the scheduler."""
        assert self.scheduler is not None
        book = getattr(self.controller, "sessions", None)
        active = getattr(book, "active", None)
        if not isinstance(active, dict):
            return []  # a controller without a session registry: no EVs in the plan
        return self.scheduler.sessions_from(active.values(), now)

    def execute(self) -> RunResult:
        t_wall = time.perf_counter()
        trace = Trace()
        res = RunResult(self.run, trace, self.step_s, [], self.start_s, self.end_s,
                        controller_name=getattr(self.controller, "name",
                                                type(self.controller).__name__))
        now = self.start_s
        next_plan = now
        next_note = now + 6 * 3600.0
        models = self.site.models
        loads = [m for m in models.values() if isinstance(m, Load)]
        evses = [(i, m) for i, m in models.items() if isinstance(m, Evse)]
        bats = [m for m in models.values() if isinstance(m, Battery)]
        gens = [m for m in models.values() if isinstance(m, PvInverter | WindTurbine)]
        res.stored_start_kwh = sum(b.pack.soc_pct / 100.0 * b.pack.capacity_kwh for b in bats)
        cap = sum(b.pack.capacity_kwh for b in bats)
        if cap > 0:
            res.eta_charge = sum(b.pack.eta_c * b.pack.capacity_kwh for b in bats) / cap
        while now < self.end_s - 1e-6:
            self._read(now)
            if self.scheduler is not None and self.controller is not None:
                self.scheduler.observe(self.state, now)
                if now >= next_plan:
                    out = self.scheduler.plan(self.state, now, self._sessions(now))
                    self.controller.plan = out.plan
                    if out.plan.status == "optimal":
                        res.plans_ok += 1
                        res.plan_solver = out.plan.solver
                    else:
                        res.plans_fallback.append(out.plan.status)
                    next_plan = now + self.replan_s
            if self.controller is not None:
                cyc = self.controller.cycle(self.state, now)
                self._apply(cyc.setpoints, now)
                for dev, point, value in cyc.commands:  # one-shot breaker commands
                    self._apply({dev: {point: value}}, now)
            self.site.check_watchdogs(wall_s=now)
            shed = sum(m.profile.p_kw(now + self.step_s / 2) for m in loads if not m.enabled)
            self.site.step(self.step_s)
            now = self.site.now_s
            self._record(trace, now, loads, evses, bats, gens, shed)
            if self.progress is not None and now >= next_note:
                self.progress(self._note(now))
                next_note += 6 * 3600.0
        for dev_id, ev in evses:
            for s in [*ev.completed, *([ev.car] if ev.car is not None else [])]:
                if s.arrival_s < self.end_s and s.departure_s > self.start_s:
                    res.sessions.append((dev_id, s))
        res.wall_s = time.perf_counter() - t_wall
        return res

    def _record(self, tr: Trace, now: float, loads: list[Load], evses: list[tuple[str, Evse]],
                bats: list[Battery], gens: list[Any], shed: float) -> None:
        site = self.site
        tr.t.append(now - self.step_s / 2)
        tr.connected.append(site.connected)
        tr.grid.append(site.balance_kw() if site.connected else 0.0)
        tr.pv.append(sum(g.p_kw for g in gens))
        tr.battery.append(sum(b.p_kw for b in bats))
        ev = [m.p_kw for _, m in evses]
        tr.ev.append(sum(ev))
        tr.v2g.append(sum(-p for p in ev if p < 0))
        bg = site.background.consumption_kw() if site.background is not None else 0.0
        tr.load.append(sum(m.p_kw for m in loads) + bg)
        tr.shed.append(shed)
        cap = sum(b.pack.capacity_kwh for b in bats)
        tr.stored.append(sum(b.pack.soc_pct / 100.0 * b.pack.capacity_kwh for b in bats))
        tr.soc.append(sum(b.pack.soc_pct * b.pack.capacity_kwh for b in bats) / cap
                      if cap > 0 else float("nan"))

    def _note(self, now: float) -> str:
        done = (now - self.start_s) / (self.end_s - self.start_s)
        local = datetime.fromtimestamp(now, self.tz)
        day = int((now - self.start_s) // 86400) + 1
        days = max(1, round((self.end_s - self.start_s) / 86400.0))
        return (f"  {RUN_TITLES[self.run]}: day {min(day, days)}/{days} "
                f"{local:%H:%M} ({done:.0%})")


def local_hours(t: np.ndarray, start_s: float) -> np.ndarray:
    return (t - start_s) / 3600.0

