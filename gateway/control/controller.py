"""The site controller: one cycle reads SiteState, runs the strategies in priority order
and returns a ``CycleResult``: one safe setpoint per controllable device, the one-shot
breaker commands of the mode machine, and the non-finite values it refused.

``Controller.cycle(state, now)`` is synchronous and does no I/O, so ``autogrid simulate``
runs it in lockstep with the physics; the daemon component calls it every ``cycle_s`` and
hands the result to the setpoint applier.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config.models import SiteConfig
from gateway.control.config import ControlConfig, EvDefaults, Strategies
from gateway.control.context import (
    BatteryView,
    ChargerView,
    Decision,
    LoadView,
    Memory,
    PvView,
    Site,
    _num,
)
from gateway.control.modes import Command, ModeMachine
from gateway.control.plan import Plan
from gateway.control.safety import Override, Setpoints, build_setpoints
from gateway.control.sessions import EvSession, SessionBook
from gateway.control.strategies import Strategy, pipeline
from gateway.model import Nature, Quality
from gateway.state import DeviceState, SiteState

if TYPE_CHECKING:
    from gateway.control.applier import WriteOutcome

log = logging.getLogger("autogrid.control")
INF = float("inf")
SETTLE_S = 0.2  # a setpoint shows in the meter's readings this long after the cycle


@dataclass
class CycleResult:
    """What one cycle asks for: held setpoints (rewritten while they hold), one-shot
    breaker commands (retried by the applier until confirmed), and the values a strategy
    or an override produced that are not finite numbers (refused, said here)."""

    setpoints: Setpoints = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Controller:
    def __init__(self, cfg: SiteConfig, control: ControlConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.control = control or cfg.control or ControlConfig()
        self.clock = clock
        self.devices = {d.id: d for d in cfg.devices}
        self.plan: Plan | None = None
        self.modes = ModeMachine(self.control)
        self.sessions = SessionBook({d.id: (d.control.ev if d.control and d.control.ev
                                            else EvDefaults())
                                     for d in cfg.devices if d.nature is Nature.EVSE})
        self.strategies: list[Strategy] = pipeline(self.control.strategies)
        self.overrides: dict[tuple[str, str], Override] = {}
        self.lockouts: dict[str, str] = {}  # device -> why (set by protection)
        self.derates: dict[str, float] = {}  # battery -> fraction of ratings (protection)
        self.memory = Memory()  # kept across cycles (shed loads, curtailment, ...)
        self.last: Setpoints = {}
        self.last_now: float | None = None
        self.last_decision: Decision | None = None
        self.grid_ok: bool | None = None
        self.forming: bool | None = None  # a battery forms the island (None = none reports)
        self.pending_commands: list[tuple[str, str, bool]] = []
        self.sent: dict[str, list[tuple[float, float]]] = {}  # device -> (when, p_set_kw)
        # With an applier that reports its writes (the daemon), a setpoint counts from when
        # the device took it (inf until then: a write that is late or failed is not in the
        # meter yet); without one (tests, lockstep simulation), from the cycle that chose it.
        self.confirm_writes = False
        self.meter_ts: float | None = None
        # device -> its last few (reading time, p_kw): what it drew when the meter sampled
        self.seen_p: dict[str, list[tuple[float, float]]] = {}
        self.write_failed: dict[str, str] = {}  # device -> why its last setpoint failed
        self.visible: set[str] = set()  # devices the last cycle's Site view could see
        self.cycles = 0

    # -- the cycle --------------------------------------------------------------------------
    def cycle(self, state: SiteState, now: float, quality_now: float | None = None
              ) -> CycleResult:
        """Run one control cycle at ``now`` (control time: deadlines, tariff, plan);
        readings are judged fresh at ``quality_now`` (default: ``now``)."""
        qnow = now if quality_now is None else quality_now
        for key in [k for k, o in self.overrides.items() if o.expires_s <= now]:
            del self.overrides[key]
        site = self.site_view(state, now, qnow)
        breakers = {d.device_id: _bool(d.value("closed", qnow))
                    for d in state.of_nature(Nature.BREAKER)}
        pcc = self.control.emergency.pcc_breaker
        site.pcc_open = pcc is not None and breakers.get(pcc) is False
        self.forming = _forming(site)
        commands = self.pending_commands + self.modes.step(
            now, self.grid_ok, breakers, self.forming,
            all(not ld.enabled for ld in site.loads))
        self.pending_commands = []
        site.mode = self.modes.mode
        site.stage = self.modes.stage
        site.source = self.modes.source
        self.visible = {x.id for xs in (site.batteries, site.chargers, site.pvs, site.loads)
                        for x in xs}
        problems: list[str] = []
        d = Decision()
        for s in self.strategies:
            if s.enabled(site):
                s.apply(site, d)
                problems += self._refuse_non_finite(d, type(s).__name__)
        dt = now - self.last_now if self.last_now is not None else 0.0
        out = build_setpoints(site, d, self.devices, self.last, dt, self.overrides,
                              self.lockouts, problems, state, qnow, self.derates)
        for dev, points in out.items():
            v = points.get("p_set_kw")
            if isinstance(v, float) and self.last.get(dev, {}).get("p_set_kw") != v:
                hist = self.sent.setdefault(dev, [])
                hist.append((INF if self.confirm_writes else qnow, v))
                del hist[:-4]
        self.last = {k: dict(v) for k, v in out.items()}
        self.last_now = now
        self.last_decision = d
        self.cycles += 1
        return CycleResult(out, commands, problems)

    def _refuse_non_finite(self, d: Decision, strategy: str) -> list[str]:
        """A strategy's NaN or infinite value never reaches a device: it keeps the last
        value written (or zero) and the cycle reports which strategy produced it."""
        out = []
        for name, values in (("battery_kw", d.battery_kw), ("ev_kw", d.ev_kw),
                             ("pv_limit_pct", d.pv_limit_pct)):
            for dev, v in list(values.items()):
                if math.isfinite(v):
                    continue
                point = "p_limit_pct" if name == "pv_limit_pct" else "p_set_kw"
                last = self.last.get(dev, {}).get(point)
                keep = float(last) if isinstance(last, int | float) else 0.0
                values[dev] = keep
                out.append(f"strategy {strategy} asked {dev}.{point} = {v}: refused, "
                           f"kept {keep:g}")
        return out

    def site_view(self, state: SiteState, now: float, qnow: float) -> Site:
        c = self.control
        g = self.cfg.site.grid
        st = c.strategies
        site = Site(now=now, grid_kw=None, import_limit_kw=g.import_limit_kw,
                    export_limit_kw=g.export_limit_kw, memory=self.memory,
                    reserve_soc_pct=st.self_consumption.reserve_soc_pct,
                    peak_threshold_kw=(st.peak_shaving.threshold_for(g.import_limit_kw)
                                       if st.peak_shaving.enabled else None),
                    limits_enforced=st.grid_limits.enabled,
                    expensive_above_per_kwh=st.time_of_use.expensive_above_per_kwh,
                    v2g=st.v2g)
        tariff = getattr(self.cfg, "tariff", None)
        if tariff is not None:
            try:
                site.price = tariff.price_at(now, self.cfg.site.timezone)
            except Exception:  # a tariff bug must not stop control
                log.exception("tariff lookup failed")
        plan = self.plan
        if plan is not None and plan.ok:
            site.plan_step = plan.at(now)
            site.plan_age_s = now - plan.created_s
        site.cell_temp_max_c = c.protection.cell_temp_max_c
        site.island_essential_soc_pct = c.emergency.island_shed_essential_soc_pct
        temps = site.cell_temp_c
        meters = list(state.of_nature(Nature.METER))
        pcc = [m for m in meters if m.role == "grid"] or (
            meters if len(meters) == 1 and meters[0].role is None else [])
        v = f = None
        self.meter_ts = None
        for m in pcc:
            p = _num(m.value("p_kw", qnow))
            if p is not None:
                site.grid_kw = (site.grid_kw or 0.0) + p
                self.meter_ts = m.readings["p_kw"].ts
            v, f = _num(m.value("v_v", qnow)), _num(m.value("f_hz", qnow))
        prot = c.protection
        # True = healthy grid at the PCC, False = seen lost, None = not measured now
        if not pcc or v is None or f is None:
            self.grid_ok = None
        else:
            self.grid_ok = (g.nominal_v * (1 - prot.under_voltage_pct / 100) <= v
                            <= g.nominal_v * (1 + prot.over_voltage_pct / 100)
                            and g.nominal_f_hz - prot.under_frequency_hz <= f
                            <= g.nominal_f_hz + prot.over_frequency_hz)
        for dev in state.devices.values():
            if dev.device_quality(qnow) is not Quality.GOOD:
                continue  # offline or stale: planned around, not waited for
            cfgdev = self.devices.get(dev.device_id)
            r = cfgdev.ratings if cfgdev else None
            if dev.nature is Nature.BESS:
                soc = _num(dev.value("soc_pct", qnow))
                if soc is None:
                    continue
                ch = _num(dev.value("p_charge_max_kw", qnow))
                dis = _num(dev.value("p_discharge_max_kw", qnow))
                rc = (r.p_charge_max_kw or r.p_max_kw) if r else None
                rd = (r.p_discharge_max_kw or r.p_max_kw) if r else None
                site.batteries.append(BatteryView(
                    dev.device_id, soc, self._power(dev, qnow),
                    _min(ch, rc), _min(dis, rd),
                    _num(dev.value("capacity_kwh", qnow)) or (r.capacity_kwh if r and
                                                               r.capacity_kwh else 0.0)))
                gf = dev.value("grid_forming", qnow)
                site.batteries[-1].grid_forming = gf if isinstance(gf, bool) else None
                t = _num(dev.value("cell_temp_max_c", qnow))
                if t is not None:
                    temps[dev.device_id] = t
            elif dev.nature is Nature.EVSE:
                site.chargers.append(self._charger(dev, now, qnow))
            elif dev.nature is Nature.LOAD:
                p = _num(dev.value("p_kw", qnow)) or 0.0
                on = dev.value("enabled", qnow) is not False
                if on and p > 0:
                    self.memory.load_on_kw[dev.device_id] = p
                dc = cfgdev.control if cfgdev else None
                site.loads.append(LoadView(
                    dev.device_id, p, on, (dc.priority if dc and dc.priority else "essential"),
                    self.memory.load_on_kw.get(dev.device_id,
                                               r.p_max_kw if r and r.p_max_kw else 0.0)))
            elif dev.nature is Nature.PV_INVERTER:
                rated = (r.p_max_kw if r and r.p_max_kw else None) or _num(
                    dev.value("p_rated_kw", qnow)) or 0.0
                site.pvs.append(PvView(dev.device_id, _num(dev.value("p_kw", qnow)) or 0.0,
                                       rated, _num(dev.value("p_limit_pct", qnow)) or 100.0))
        return site

    def outcome(self, o: WriteOutcome) -> None:
        """The applier's answer to a write: a setpoint counts from when the device took
        it; one the device did not take is forgotten (its power is not assumed)."""
        if o.ok:
            self.write_failed.pop(o.device, None)
            self.written(o.device, o.point, o.value, o.at)
            return
        self.write_failed[o.device] = f"{o.point} = {o.value!r}: {o.error}"
        if o.point != "p_set_kw":
            return
        hist = self.sent.get(o.device) or []
        for i in range(len(hist) - 1, -1, -1):
            if hist[i][1] == o.value and hist[i][0] == INF:
                del hist[i]
                break

    def written(self, device_id: str, point: str, value: object, ts: float) -> None:
        """The device took ``value`` at ``ts`` (wall time, as readings)."""
        if point != "p_set_kw" or not isinstance(value, float):
            return
        hist = self.sent.setdefault(device_id, [])
        for i in range(len(hist) - 1, -1, -1):
            if hist[i][1] == value:
                if hist[i][0] == INF:
                    hist[i] = (ts, hist[i][1])
                return
        hist.append((ts, value))  # a retry took a value whose first write failed
        del hist[:-4]

    def _charger(self, dev: DeviceState, now: float, qnow: float) -> ChargerView:
        points = {p: dev.value(p, qnow) for p in dev.readings}
        cfgdev = self.devices.get(dev.device_id)
        r = cfgdev.ratings if cfgdev else None
        connected = points.get("connected")
        session = self.sessions.observe(dev.device_id, now,
                                        connected if isinstance(connected, bool) else None,
                                        points)
        p_max = _min(_num(points.get("p_max_kw")),
                     (r.p_charge_max_kw or r.p_max_kw) if r else None)
        if session is not None and connected:
            self._learn_car(dev, session, qnow)
            if session.car_max_kw is not None:
                p_max = min(p_max, session.car_max_kw)
        dis = (r.p_discharge_max_kw if r and r.p_discharge_max_kw is not None else p_max) \
            if points.get("v2g") is True else 0.0
        return ChargerView(dev.device_id, self._power(dev, qnow) if connected else 0.0,
                           p_max if p_max < INF else 0.0, dis if dis < INF else 0.0, session)

    def _learn_car(self, dev: DeviceState, session: EvSession, qnow: float) -> None:
        """Compare the car's power with the last setpoint, once a reading shows it."""
        hist = self.sent.get(dev.device_id)
        r = dev.readings.get("p_kw")
        p = _num(dev.value("p_kw", qnow))
        if not hist or r is None or p is None:
            return
        t_cmd, v_cmd = hist[-1]
        if r.ts >= t_cmd + SETTLE_S:
            session.observe_power(v_cmd, p)

    def _power(self, dev: DeviceState, qnow: float) -> float:
        """The device's power as the PCC meter's sample saw it. Polls are not aligned, so
        the device's own reading may be older or newer than the meter's sample:
        - newer (it already shows a setpoint or a change the meter has not seen): take the
          device's last reading from before the sample instead, else counting its new power
          as already in the meter hands the same headroom out twice;
        - taken before our last setpoint took effect (the meter saw that setpoint): take
          the setpoint, the newest the meter's sample can reflect."""
        r = dev.readings.get("p_kw")
        p = _num(dev.value("p_kw", qnow)) or 0.0
        if r is None:
            return p
        seen = self.seen_p.setdefault(dev.device_id, [])
        if not seen or seen[-1][0] != r.ts:
            seen.append((r.ts, p))
            del seen[:-8]
        if self.meter_ts is None:
            return p
        ts = r.ts
        if ts > self.meter_ts:
            before = [x for x in seen if x[0] <= self.meter_ts]
            if before:
                ts, p = before[-1]
        hist = self.sent.get(dev.device_id)
        settled = [c for c in hist or () if c[0] + SETTLE_S <= self.meter_ts]
        if not settled:
            return p
        t_cmd, v_cmd = settled[-1]
        return p if ts >= t_cmd + SETTLE_S else v_cmd

    def rebind(self, cfg: SiteConfig) -> None:
        """A reload changed the devices: use their new ratings; forget removed ones."""
        self.cfg = cfg
        self.devices = {d.id: d for d in cfg.devices}
        for key in [k for k in self.overrides if k[0] not in self.devices]:
            del self.overrides[key]
        for table in (self.last, self.sent, self.seen_p, self.write_failed):
            for dev_id in [d for d in table if d not in self.devices]:
                del table[dev_id]

    # -- operator side --------------------------------------------------------------------
    def set_override(self, device: str, point: str, value: Any, duration_s: float,
                     user: str) -> Override:
        now = self.clock()
        o = Override(device, point, value, now + duration_s, user, now)
        self.overrides[(device, point)] = o
        return o

    def set_strategies(self, new: Strategies) -> None:
        """Put new strategy sections in force from the next cycle (each strategy is given
        its section again)."""
        self.control.strategies = new
        self.strategies = pipeline(new)

    def request_mode(self, want: str, reason: str, operator: bool = False) -> str | None:
        """Enter a mode (estop, island, reconnect, reset, black_start); the reason it was
        refused, or None when done. Breaker commands go out with the next cycle (or at
        once, by whoever asked). An island an operator asked for is held until an
        operator reconnects."""
        why = self.modes.refuse(want, self.grid_ok is True)
        if why is not None:
            return why
        self.pending_commands += self.modes.request(want, self.clock(), reason,
                                                    self.grid_ok is True, operator)
        return None

    def grid_lost_mode(self) -> str:
        """What loss of grid leads to: an island if a battery forms it (or none can say),
        a black start from the battery if the site went dark."""
        return "black_start" if self.forming is False else "island"

    def status(self) -> dict[str, Any]:
        now = self.clock()
        plan = self.plan
        g = self.cfg.site.grid
        peak = self.control.strategies.peak_shaving
        return {
            "mode": self.modes.as_dict(), "grid_ok": self.grid_ok, "cycles": self.cycles,
            "setpoints": self.last, "lockouts": dict(self.lockouts),
            "derates": dict(self.derates),
            "write_failed": dict(self.write_failed),
            "notes": dict(self.last_decision.notes) if self.last_decision else {},
            "overrides": [o.as_dict() for o in self.overrides.values()],
            "shed": list(self.memory.shed),
            "curtail": dict(self.memory.curtail),
            "plan": None if plan is None else {
                "created_s": plan.created_s, "solver": plan.solver, "status": plan.status,
                "steps": len(plan.steps), "tracking": plan.ok and plan.at(now) is not None},
            "strategies": self.control.strategies.model_dump(),
            "pcc_breaker": self.control.emergency.pcc_breaker,
            "limits": {"import_limit_kw": g.import_limit_kw,
                       "export_limit_kw": g.export_limit_kw,
                       # what peak shaving holds now (None: off or nothing to hold to)
                       "peak_threshold_kw": peak.threshold_for(g.import_limit_kw)
                       if peak.enabled else None},
        }


def _forming(site: Site) -> bool | None:
    """Whether a battery forms the island now (None: no battery reports grid_forming)."""
    known = [b.grid_forming for b in site.batteries if b.grid_forming is not None]
    return any(known) if known else None


def _min(a: float | None, b: float | None) -> float:
    vals = [x for x in (a, b) if x is not None]
    return max(0.0, min(vals)) if vals else INF


def _bool(v: object) -> bool | None:
    return v if isinstance(v, bool) else None
