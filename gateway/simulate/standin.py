"""A minimal rule-based controller for the simulate harness, used only when the site
controller (gateway.control.controller) is not available in this tree.

Same contract as the real one as far as the harness needs it: ``plan`` attribute, and
``cycle(state, now) -> {device: {point: value}}``. Rules in priority order: EV deadlines
(priority class, then least laxity), plan tracking or self-consumption for the battery,
then the hard grid limits (battery, then EVs lowest class first, then shedding loads,
then PV curtailment), then restoring shed loads with hysteresis.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.models import SiteConfig
from gateway.control.plan import Plan
from gateway.model import Nature, PointValue
from gateway.state import SiteState

RANK = {"emergency": 0, "fleet": 1, "public": 2}
RESERVE_SOC_PCT = 20.0
RESTORE_HYSTERESIS_KW = 2.0
MARGIN_KW = 0.5  # keep this far inside the grid limits


@dataclass
class _Ev:
    id: str
    p_kw: float
    p_max_kw: float
    need_kwh: float
    left_h: float
    priority: str
    v2g_kw: float

    @property
    def min_kw(self) -> float:
        if self.need_kwh <= 0:
            return 0.0
        return min(self.p_max_kw, self.need_kwh / max(self.left_h, 1e-3))

    @property
    def laxity_h(self) -> float:
        return self.left_h - self.need_kwh / max(self.p_max_kw, 1e-6)


def _f(v: PointValue | None, default: float = 0.0) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


class StandInController:
    """See the module doc; deliberately small."""

    name = "stand-in rule-based controller (gateway/simulate/standin.py)"

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.plan: Plan | None = None
        self.devices = {d.id: d for d in cfg.devices if d.enabled}
        self.priority = {d.id: (d.control.ev.priority if d.control and d.control.ev else
                                (cfg.scheduler.ev_priority.get(d.id, "public")
                                 if cfg.scheduler else "public"))
                         for d in cfg.devices if d.nature is Nature.EVSE}
        self.load_on_kw: dict[str, float] = {}

    def cycle(self, state: SiteState, now: float) -> dict[str, dict[str, PointValue]]:
        grid = self.cfg.site.grid
        imp = grid.import_limit_kw if grid.import_limit_kw is not None else float("inf")
        exp = grid.export_limit_kw if grid.export_limit_kw is not None else float("inf")
        g = 0.0
        for m in state.of_nature(Nature.METER):
            g += _f(m.value("p_kw", now))
        out: dict[str, dict[str, PointValue]] = {}
        step = self.plan.at(now) if self.plan is not None and self.plan.ok else None
        # -- measured flows -----------------------------------------------------------
        bats = [(d.device_id, _f(d.value("p_kw", now)), _f(d.value("soc_pct", now)),
                 _f(d.value("p_charge_max_kw", now)), _f(d.value("p_discharge_max_kw", now)))
                for d in state.of_nature(Nature.BESS) if d.value("soc_pct", now) is not None]
        evs: list[_Ev] = []
        idle: list[str] = []
        for d in state.of_nature(Nature.EVSE):
            if d.value("connected", now) is not True:
                idle.append(d.device_id)
                continue
            r = self.devices[d.device_id].ratings
            dep = _f(d.value("ev_departure_s", now), 8 * 3600.0)
            need = _f(d.value("ev_energy_req_kwh", now), 20.0)
            v2g = (r.p_discharge_max_kw or 0.0) if d.value("v2g", now) is True else 0.0
            evs.append(_Ev(d.device_id, _f(d.value("p_kw", now)),
                           _f(d.value("p_max_kw", now), r.p_max_kw or 11.0), need,
                           dep / 3600.0, self.priority.get(d.device_id, "public"), v2g))
        base = g + sum(b[1] for b in bats) - sum(e.p_kw for e in evs)  # w/o storage and EVs
        # -- EVs: deadlines first; with a plan, its power where it asks for more ----------
        ev_set: dict[str, float] = {}
        room = imp - MARGIN_KW - base
        for e in sorted(evs, key=lambda e: (RANK.get(e.priority, 2), e.laxity_h)):
            want = e.min_kw
            if step is not None and e.id in step.ev_p_kw:
                want = max(want, step.ev_p_kw[e.id]) if step.ev_p_kw[e.id] >= 0 else (
                    max(step.ev_p_kw[e.id], -e.v2g_kw) if e.v2g_kw > 0 else want)
            elif base < 0 and e.need_kwh > 0:  # PV surplus goes into the car
                want = max(want, min(e.p_max_kw, -base))
            p = min(want, max(room, 0.0), e.p_max_kw) if want > 0 else want
            ev_set[e.id] = p
            room -= p
        ev_total = sum(ev_set.values())
        # -- battery: the plan, else self-consumption ---------------------------------
        bat_set: dict[str, float] = {}
        net = base + ev_total
        for bid, _, soc, ch_max, dis_max in bats:
            if step is not None and bid in step.battery_p_kw:
                p = step.battery_p_kw[bid]
            else:
                p = net / max(len(bats), 1)
                if p > 0 and soc <= RESERVE_SOC_PCT:
                    p = 0.0
            bat_set[bid] = min(max(p, -ch_max), dis_max)
        # -- hard grid limits ---------------------------------------------------------
        pred = net - sum(bat_set.values())
        if pred > imp - MARGIN_KW:
            over = pred - (imp - MARGIN_KW)
            for bid, _, _, _, dis_max in bats:
                more = min(over, dis_max - bat_set[bid])
                bat_set[bid] += max(more, 0.0)
                over -= max(more, 0.0)
            for e in sorted(evs, key=lambda e: (-RANK.get(e.priority, 2), -e.laxity_h)):
                if over <= 0:
                    break
                cut = min(over, max(ev_set[e.id], 0.0) + e.v2g_kw)
                ev_set[e.id] -= cut
                over -= cut
            if over > 0:
                self._shed(state, now, over, out)
        elif pred < -(exp - MARGIN_KW):
            extra = -(exp - MARGIN_KW) - pred
            for bid, _, _, ch_max, _ in bats:
                more = min(extra, ch_max + bat_set[bid])
                bat_set[bid] -= max(more, 0.0)
                extra -= max(more, 0.0)
            pred = -(exp - MARGIN_KW) + extra
        self._curtail(state, now, pred, exp, out)
        if pred < imp - MARGIN_KW - RESTORE_HYSTERESIS_KW:
            self._restore(state, now, imp - MARGIN_KW - RESTORE_HYSTERESIS_KW - pred, out)
        for bid, p in bat_set.items():
            out.setdefault(bid, {})["p_set_kw"] = round(p, 3)
        for eid, p in ev_set.items():
            out.setdefault(eid, {})["p_set_kw"] = round(p, 3)
        for eid in idle:  # no car: nothing may start at full power before we see it
            out.setdefault(eid, {})["p_set_kw"] = 0.0
        return out

    def _shed(self, state: SiteState, now: float, over: float,
              out: dict[str, dict[str, PointValue]]) -> None:
        loads = sorted((d for d in state.of_nature(Nature.LOAD)
                        if d.value("enabled", now) is True), key=self._load_rank, reverse=True)
        for d in loads:
            if over <= 0 or self._load_rank(d) == 0:
                break
            p = _f(d.value("p_kw", now))
            self.load_on_kw[d.device_id] = p
            out.setdefault(d.device_id, {})["enabled"] = False
            over -= p

    def _restore(self, state: SiteState, now: float, room: float,
                 out: dict[str, dict[str, PointValue]]) -> None:
        for d in sorted(state.of_nature(Nature.LOAD), key=self._load_rank):
            if d.value("enabled", now) is False:
                p = self.load_on_kw.get(d.device_id, self.devices[d.device_id].ratings.p_max_kw
                                        or 0.0)
                if p <= room:
                    out.setdefault(d.device_id, {})["enabled"] = True
                    room -= p

    def _load_rank(self, d: object) -> int:
        dev = self.devices[getattr(d, "device_id", "")]
        prio = dev.control.priority if dev.control and dev.control.priority else "deferrable"
        return {"critical": 0, "essential": 1, "deferrable": 2}[prio]

    def _curtail(self, state: SiteState, now: float, pred: float, exp: float,
                 out: dict[str, dict[str, PointValue]]) -> None:
        """Limit PV so the export stays inside its limit; lift the limit again with room."""
        pvs = list(state.of_nature(Nature.PV_INVERTER))
        if not pvs or exp == float("inf"):
            return
        excess = -(exp - MARGIN_KW) - pred  # > 0: this much too much export
        for d in pvs:
            rated = _f(d.value("p_rated_kw", now), self.devices[d.device_id].ratings.p_max_kw
                       or 1.0)
            p = _f(d.value("p_kw", now))
            lim = _f(d.value("p_limit_pct", now), 100.0)
            target = p - excess / len(pvs) if excess > 0 else (
                lim / 100.0 * rated + (-excess) / len(pvs))
            pct = min(100.0, max(0.0, target / max(rated, 1e-6) * 100.0))
            if abs(pct - lim) > 0.5:
                out.setdefault(d.device_id, {})["p_limit_pct"] = round(pct, 1)
