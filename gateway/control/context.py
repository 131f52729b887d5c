"""One cycle's view of the site (from SiteState, good readings only) and the decision the
strategies build together. Strategies read ``Site`` and edit ``Decision``; the grid import
a decision would cause is predicted from the measured import plus the changes it makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.control.config import LOAD_RANK
from gateway.control.plan import PlanStep
from gateway.control.sessions import EvSession
from gateway.control.strategies.v2g_config import V2gConfig


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass
class BatteryView:
    id: str
    soc_pct: float
    p_kw: float  # + = discharge
    charge_max_kw: float
    discharge_max_kw: float
    capacity_kwh: float
    grid_forming: bool | None = None  # reads back forming; None = the device has no such point


@dataclass
class ChargerView:
    id: str
    p_kw: float  # + = charging
    p_max_kw: float
    discharge_max_kw: float  # 0 unless the charger is bidirectional
    session: EvSession | None


@dataclass
class LoadView:
    id: str
    p_kw: float
    enabled: bool
    priority: str
    p_on_kw: float  # what it draws when on (last seen, or its rating)

    @property
    def rank(self) -> int:
        return LOAD_RANK[self.priority]


@dataclass
class PvView:
    id: str
    p_kw: float
    rated_kw: float
    limit_pct: float


@dataclass
class Memory:
    """What control keeps from one cycle to the next (the controller owns it)."""

    shed: list[str] = field(default_factory=list)  # loads the grid limit shed, in order
    restore_since: float | None = None  # since when there is room to restore the next one
    curtail: dict[str, float] = field(default_factory=dict)  # PV limit % at the export limit
    load_on_kw: dict[str, float] = field(default_factory=dict)  # a load's power when last on


@dataclass
class Handoff:
    """What one strategy tells a later one within a cycle; fresh every cycle.

    Each field has one writer that runs before its readers (``strategies.check_handoffs``
    refuses a pipeline where a reader would come first and see nothing)."""

    plan_ev_kw: dict[str, float] | None = None  # plan tracking -> EV charging (None: no plan)
    ev_must_kw: dict[str, float] = field(default_factory=dict)  # EV deadlines -> peak shaving
    tou_cheap: bool = False  # time of use -> self-consumption: import is cheap now


@dataclass
class Site:
    """Everything the strategies may look at in one cycle. Each strategy reads its own
    config section; what one section sets for the others is here (the controller fills it
    in from ``control.strategies`` every cycle)."""

    now: float
    grid_kw: float | None  # PCC import (+) / export (-); None = not measured now
    import_limit_kw: float | None
    export_limit_kw: float | None
    batteries: list[BatteryView] = field(default_factory=list)
    chargers: list[ChargerView] = field(default_factory=list)
    loads: list[LoadView] = field(default_factory=list)
    pvs: list[PvView] = field(default_factory=list)
    price: tuple[float, float] | None = None  # (import, export) per kWh now
    plan_step: PlanStep | None = None  # of the scheduler's last good plan, now
    plan_age_s: float | None = None  # how old that plan is
    mode: str = "normal"
    stage: int = 0  # the step of a staged reconnect / black start (modes)
    source: str | None = None  # what a black start starts from ("battery")
    pcc_open: bool = False  # the PCC breaker reads open
    cell_temp_max_c: float | None = None  # protection's limit (margins keep below it)
    cell_temp_c: dict[str, float] = field(default_factory=dict)  # battery -> hottest cell
    island_essential_soc_pct: float = 40.0  # islanded: below this only critical loads
    memory: Memory = field(default_factory=Memory)  # kept across cycles
    handoff: Handoff = field(default_factory=Handoff)  # between strategies, this cycle
    # from the strategies' sections, for the strategies that plan around them:
    reserve_soc_pct: float = 20.0  # backup reserve (self_consumption.reserve_soc_pct)
    peak_threshold_kw: float | None = None  # what peak shaving holds (None: it is off)
    limits_enforced: bool = True  # grid_limits.enabled: the import limit is hard
    expensive_above_per_kwh: float = 0.35  # time_of_use's dear price (EVs: PV only)
    v2g: V2gConfig = field(default_factory=V2gConfig)  # the guard on what cars give back


@dataclass
class Decision:
    battery_kw: dict[str, float] = field(default_factory=dict)  # + = discharge
    ev_kw: dict[str, float] = field(default_factory=dict)  # + = charge
    pv_limit_pct: dict[str, float] = field(default_factory=dict)
    load_on: dict[str, bool] = field(default_factory=dict)
    grid_forming: dict[str, bool] = field(default_factory=dict)  # battery -> forms the island
    notes: dict[str, str] = field(default_factory=dict)  # strategy -> what it did

    def note(self, strategy: str, text: str) -> None:
        self.notes[strategy] = text


def predicted_grid(site: Site, d: Decision) -> float | None:
    """Grid import after the decision takes effect (measured import + changes)."""
    if site.grid_kw is None:
        return None
    g = site.grid_kw
    for b in site.batteries:
        g -= d.battery_kw.get(b.id, b.p_kw) - b.p_kw
    for c in site.chargers:
        g += d.ev_kw.get(c.id, c.p_kw) - c.p_kw
    for pv in site.pvs:
        lim = d.pv_limit_pct.get(pv.id)
        if lim is not None:
            g += pv.p_kw - min(pv.p_kw, lim / 100.0 * pv.rated_kw)
    for ld in site.loads:
        on = d.load_on.get(ld.id, ld.enabled)
        if on and not ld.enabled:
            g += ld.p_on_kw
        elif not on and ld.enabled:
            g -= ld.p_kw
    return g


def battery_room(site: Site, d: Decision, discharge: bool, reserve: bool = True
                 ) -> dict[str, float]:
    """Per battery: how much more it could discharge (or charge) beyond the decision."""
    out = {}
    for b in site.batteries:
        now = d.battery_kw.get(b.id, 0.0)
        if discharge:
            ok = not reserve or b.soc_pct > site.reserve_soc_pct
            out[b.id] = max(0.0, b.discharge_max_kw - now) if ok else max(0.0, -now)
        else:
            out[b.id] = max(0.0, b.charge_max_kw + now)
    return out


def spread(room: dict[str, float], amount: float) -> dict[str, float]:
    """Split ``amount`` over the ids in proportion to their room (never beyond it)."""
    total = sum(room.values())
    if total <= 0 or amount <= 0:
        return {k: 0.0 for k in room}
    f = min(1.0, amount / total)
    return {k: v * f for k, v in room.items()}
