"""The scheduler's linear program: battery and EV energy over a horizon at least cost.

Pure and synchronous (no I/O, no asyncio) so it runs in a worker thread and is tested on
hand-checkable cases. Decision variables per step: grid import/export, PV curtailment,
battery charge/discharge and SOC, EV charge (and V2G discharge) per session. Grid limits,
battery power/SOC limits and the power balance are hard constraints; an EV's missing
energy at departure is a slack priced by its priority class, so a session that cannot be
served is charged as far as possible instead of making the whole plan infeasible. When
HiGHS cannot find an optimum (infeasible, time limit, numerical trouble) the result is a
``Plan`` whose status starts with "fallback:" and the site controller keeps its rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from gateway.control.plan import Plan, PlanStep

SOLVER = "scipy-highs"
# Euro per kWh the plan is short at a departure, by priority class: far above any tariff,
# and ordered so an emergency vehicle is served before a fleet car before a public one.
SHORTFALL_COST = {"emergency": 100.0, "fleet": 10.0, "public": 2.0}
CYCLE_COST = 0.002  # per kWh through the battery: no pointless cycling, no charge+discharge
V2G_COST = 0.03  # per kWh taken from a car: its battery wear, so V2G only pays at real peaks
EARLY_COST = 1e-5  # per kWh, rising over the horizon
# per kWh stored per step: of equal plans, store surplus now rather than later (a PV
# forecast errs; energy already in the battery does not)
STORE_EARLY = 2e-6
# per kWh imported, falling to 0 over the horizon: of equal plans, buy energy as late as
# the price allows (PV may yet cover it, and every re-plan sees the sky again) rather
# than filling the battery from the grid early and exporting the PV that comes after
IMPORT_LATE = 1e-3
CURTAIL_COST = 0.0005  # per kWh of PV thrown away: only when it has to be
# per kW of the horizon's peak import, on top of any demand charge: of plans that cost
# the same (a night at one price, a car with hours to spare), take the flattest import
# rather than charging everything at full power in the first cheap step
PEAK_COST = 0.01


@dataclass(frozen=True)
class BatteryInput:
    """A battery as the LP sees it; energies at the cells (kWh), powers at AC (kW)."""

    id: str
    capacity_kwh: float
    soc_pct: float
    soc_min_pct: float = 5.0
    soc_max_pct: float = 95.0
    p_charge_max_kw: float = 0.0
    p_discharge_max_kw: float = 0.0
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    reserve_soc_pct: float = 0.0  # backup reserve the plan never goes below


@dataclass(frozen=True)
class EvInput:
    """One vehicle visit: present (arrival in the past) or expected."""

    evse_id: str
    arrival_s: float
    departure_s: float
    energy_kwh: float  # still wanted by departure
    p_max_kw: float
    priority: str = "public"  # emergency | fleet | public
    v2g_kw: float = 0.0  # discharge power allowed (0 = no V2G)
    v2g_kwh: float = 0.0  # energy the car can give before its floor (V2G)
    session_id: str = ""


@dataclass(frozen=True)
class ProblemInput:
    """Everything one solve needs; arrays have one value per step."""

    start_s: float
    step_s: float
    load_kw: np.ndarray  # uncontrolled consumption (not batteries, not EVs)
    pv_kw: np.ndarray  # available generation (PV + wind)
    import_price: np.ndarray  # per kWh
    export_price: np.ndarray  # per kWh (revenue)
    import_limit_kw: float | None = None
    export_limit_kw: float | None = None
    batteries: tuple[BatteryInput, ...] = ()
    evs: tuple[EvInput, ...] = ()
    demand_charge_per_kw: float = 0.0  # cost of the horizon's peak import
    # per kWh at the cells left at the end; default: what buying it back costs (the
    # horizon's cheapest import through the charge efficiency), so the plan neither
    # hoards energy for after the horizon nor throws away what is worth keeping
    terminal_value_per_kwh: float | None = None

    @property
    def n(self) -> int:
        return len(self.load_kw)


@dataclass
class SolveResult:
    plan: Plan
    cost: float | None = None  # objective value (tariff part), None on fallback
    ev_shortfall_kwh: dict[str, float] = field(default_factory=dict)
    curtail_kwh: float = 0.0
    solve_ms: float = 0.0


class _Vars:
    """Column bookkeeping: named blocks of n variables each."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.size = 0
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.cost: list[float] = []

    def block(self, lo: float | np.ndarray, hi: float | np.ndarray, cost: float | np.ndarray,
              n: int | None = None) -> int:
        k = self.n if n is None else n
        start = self.size
        self.lo.extend(np.broadcast_to(np.asarray(lo, float), (k,)).tolist())
        self.hi.extend(np.broadcast_to(np.asarray(hi, float), (k,)).tolist())
        self.cost.extend(np.broadcast_to(np.asarray(cost, float), (k,)).tolist())
        self.size += k
        return start


class _Rows:
    """Sparse constraint rows (equalities or <= inequalities)."""

    def __init__(self) -> None:
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.rhs: list[float] = []

    def add(self, coefs: list[tuple[int, float]], rhs: float) -> None:
        row = len(self.rhs)
        for col, val in coefs:
            self.r.append(row)
            self.c.append(col)
            self.v.append(val)
        self.rhs.append(rhs)

    def matrix(self, ncols: int) -> coo_matrix | None:
        if not self.rhs:
            return None
        return coo_matrix((self.v, (self.r, self.c)), shape=(len(self.rhs), ncols))


def fallback(created_s: float, why: str) -> Plan:
    return Plan(created_s=created_s, steps=(), solver=SOLVER, status=f"fallback: {why}")


def solve(p: ProblemInput, time_limit_s: float = 10.0, now_s: float | None = None
          ) -> SolveResult:
    """Build and solve the LP; never raises for a bad problem, returns a fallback plan."""
    created = p.start_s if now_s is None else now_s
    n, h = p.n, p.step_s / 3600.0
    problem = _check(p)
    if problem:
        return SolveResult(fallback(created, problem))
    t0 = time.perf_counter()
    v = _Vars(n)
    imp_hi = p.import_limit_kw if p.import_limit_kw is not None else np.inf
    exp_hi = p.export_limit_kw if p.export_limit_kw is not None else np.inf
    gi = v.block(0.0, imp_hi, (p.import_price + IMPORT_LATE * (1.0 - np.arange(n) / n)) * h)
    ge = v.block(0.0, exp_hi, -p.export_price * h)
    cur = v.block(0.0, np.maximum(p.pv_kw, 0.0), CURTAIL_COST * h)
    eq, ub = _Rows(), _Rows()
    bat_cols: list[tuple[BatteryInput, int, int, int]] = []
    for b in p.batteries:
        ch = v.block(0.0, b.p_charge_max_kw, CYCLE_COST * h)
        dis = v.block(0.0, b.p_discharge_max_kw, CYCLE_COST * h)
        lo = b.capacity_kwh * max(b.soc_min_pct, b.reserve_soc_pct) / 100.0
        hi = b.capacity_kwh * b.soc_max_pct / 100.0
        e0 = b.capacity_kwh * b.soc_pct / 100.0
        # SOC after each step; a start outside the band may only move towards it
        soc = v.block(min(lo, e0), max(hi, e0), -STORE_EARLY)
        value = (p.terminal_value_per_kwh if p.terminal_value_per_kwh is not None
                 else max(0.0, float(np.min(p.import_price))) / b.eta_charge)
        v.cost[soc + n - 1] = -value
        for t in range(n):
            prev = [(soc + t - 1, -1.0)] if t else []
            eq.add([(soc + t, 1.0), *prev, (ch + t, -b.eta_charge * h),
                    (dis + t, h / b.eta_discharge)], e0 if t == 0 else 0.0)
        bat_cols.append((b, ch, dis, soc))
    ev_cols: list[tuple[EvInput, int, int | None, int, np.ndarray]] = []
    for e in p.evs:
        mask = _presence(p, e)
        # a hair of cost on later steps: of equal plans, charge early (forecasts err)
        chg = v.block(0.0, e.p_max_kw * mask, EARLY_COST * h * np.arange(n) / n)
        edis = v.block(0.0, e.v2g_kw * mask, V2G_COST * h) if e.v2g_kw > 0 else None
        short = v.block(0.0, e.energy_kwh, SHORTFALL_COST.get(e.priority, 2.0), n=1)
        idx = np.nonzero(mask)[0]
        coefs = [(chg + int(t), -h) for t in idx]
        if edis is not None:
            coefs += [(edis + int(t), h) for t in idx]
            # never take more from the car than it has above its floor, at any step
            for k in range(len(idx)):
                ub.add([(edis + int(t), h) for t in idx[:k + 1]]
                       + [(chg + int(t), -h) for t in idx[:k + 1]], e.v2g_kwh)
        ub.add([*coefs, (short, -1.0)], -e.energy_kwh)  # delivered + shortfall >= wanted
        ev_cols.append((e, chg, edis, short, mask))
    peak = v.block(0.0, imp_hi, p.demand_charge_per_kw + PEAK_COST, n=1)
    for t in range(n):
        ub.add([(gi + t, 1.0), (peak, -1.0)], 0.0)
    for t in range(n):  # power balance: import - export = load - pv + curtail + storage
        row = [(gi + t, 1.0), (ge + t, -1.0), (cur + t, -1.0)]
        for _, ch, dis, _ in bat_cols:
            row += [(ch + t, -1.0), (dis + t, 1.0)]
        for _, chg, edis, _, mask in ev_cols:
            if mask[t]:
                row.append((chg + t, -1.0))
                if edis is not None:
                    row.append((edis + t, 1.0))
        eq.add(row, float(p.load_kw[t] - p.pv_kw[t]))
    try:
        res = linprog(np.asarray(v.cost), A_ub=ub.matrix(v.size), b_ub=ub.rhs or None,
                      A_eq=eq.matrix(v.size), b_eq=eq.rhs,
                      bounds=list(zip(v.lo, [None if x == np.inf else x for x in v.hi],
                                      strict=True)),
                      method="highs", options={"time_limit": float(time_limit_s)})
    except (ValueError, MemoryError) as exc:
        return SolveResult(fallback(created, f"solver error: {exc}"))
    ms = (time.perf_counter() - t0) * 1000.0
    if res.status != 0 or res.x is None:
        why = {1: f"solver stopped at its limit ({time_limit_s:g} s): {res.message}",
               2: "infeasible: no schedule keeps the site within its grid limits with this "
                  "forecast (load above import limit plus storage?)",
               3: "unbounded problem (missing limits)",
               4: f"numerical difficulties: {res.message}"}.get(res.status, str(res.message))
        return SolveResult(fallback(created, why), solve_ms=ms)
    x = res.x
    steps = []
    for t in range(n):
        s0 = p.start_s + t * p.step_s
        bats = {b.id: float(x[dis + t] - x[ch + t]) for b, ch, dis, _ in bat_cols}
        evs: dict[str, float] = {}
        for e, chg, edis, _, _ in ev_cols:
            pw = float(x[chg + t] - (x[edis + t] if edis is not None else 0.0))
            evs[e.evse_id] = evs.get(e.evse_id, 0.0) + pw
        steps.append(PlanStep(s0, s0 + p.step_s, _tidy(bats), _tidy(evs),
                              round(float(x[gi + t] - x[ge + t]), 6)))
    cost = float(np.dot(x[gi:gi + n], p.import_price) - np.dot(x[ge:ge + n], p.export_price)
                 ) * h
    shortfall = {e.session_id or f"{e.evse_id}@{e.arrival_s:.0f}": float(x[s])
                 for e, _, _, s, _ in ev_cols}
    return SolveResult(Plan(created, tuple(steps), SOLVER, "optimal"), cost, shortfall,
                       float(np.sum(x[cur:cur + n])) * h, ms)


def _tidy(d: dict[str, float]) -> dict[str, float]:
    return {k: (0.0 if abs(val) < 1e-6 else round(val, 6)) for k, val in d.items()}


def _presence(p: ProblemInput, e: EvInput) -> np.ndarray:
    """Fraction of each step the car is plugged in (0..1), so power caps stay exact."""
    starts = p.start_s + np.arange(p.n) * p.step_s
    ends = starts + p.step_s
    overlap = np.clip(np.minimum(ends, e.departure_s) - np.maximum(starts, e.arrival_s),
                      0.0, p.step_s)
    return np.asarray(overlap / p.step_s, dtype=float)


def _check(p: ProblemInput) -> str:
    """A reason the inputs are unusable, or ''."""
    n = p.n
    if n == 0:
        return "empty horizon"
    for name, arr in (("pv", p.pv_kw), ("import price", p.import_price),
                      ("export price", p.export_price)):
        if len(arr) != n:
            return f"{name} forecast has {len(arr)} steps, load has {n}"
    for name, arr in (("load", p.load_kw), ("pv", p.pv_kw)):
        if not np.all(np.isfinite(arr)):
            return f"{name} forecast has missing values"
    for b in p.batteries:
        if b.capacity_kwh <= 0:
            return f"battery '{b.id}' has no capacity"
    return ""
