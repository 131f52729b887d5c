"""Key figures of one simulated run, and the table that compares runs side by side.

Runs end with different amounts of energy stored (batteries, cars still plugged in), so
the energy cost alone rewards a run that empties the battery and hides one that hoards.
``net_cost`` settles the difference: stored energy gained (or lost) is credited (or
charged) at what it costs to buy back, the run's cheapest import price, through the
battery's charge efficiency. That is what refilling it would cost, so hoarding energy at
that price earns nothing and draining it saves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gateway.config.models import SiteConfig
from gateway.control.scheduler_config import Tariff
from gateway.model import Nature
from gateway.simulate.harness import RUN_TITLES, RunResult

CLASSES = ("emergency", "fleet", "public")
LIMIT_TOLERANCE_KW = 0.05  # meter noise; above the limit by more than this is a violation
MISSED_TOLERANCE_KWH = 0.1  # a car that left this much short of its request missed


@dataclass
class Kpis:
    peak_import_kw: float
    energy_cost: float
    import_kwh: float
    export_kwh: float
    self_consumption_pct: float | None
    stored_change_kwh: float = 0.0  # battery energy at the end minus at the start
    ev_open_kwh: float = 0.0  # delivered to cars still plugged in at the end
    stored_value: float = 0.0  # of the two above, at the cheapest import price (buy-back)
    net_cost: float = 0.0  # energy cost - stored value
    ev_requested_kwh: dict[str, float] = field(default_factory=dict)  # by class
    ev_delivered_kwh: dict[str, float] = field(default_factory=dict)
    ev_missed: dict[str, int] = field(default_factory=dict)
    ev_sessions: dict[str, int] = field(default_factory=dict)
    ev_open: int = 0  # still plugged in at the end (not judged)
    v2g_kwh: float = 0.0
    shed_kwh: float = 0.0
    violations: int = 0  # episodes above the import or export limit
    violation_min: float = 0.0
    violation_kwh: float = 0.0
    violation_max_kw: float = 0.0  # the worst step's excess over a limit

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _episodes(mask: np.ndarray) -> int:
    if mask.size == 0:
        return 0
    return int(mask[0]) + int(np.sum(mask[1:] & ~mask[:-1]))


def ev_priority(cfg: SiteConfig) -> dict[str, str]:
    """Priority class of sessions per charger, as the controller gets it from the config."""
    out: dict[str, str] = {}
    for d in cfg.devices:
        if d.nature is Nature.EVSE:
            prio = (d.control.ev.priority if d.control is not None and d.control.ev is not None
                    else cfg.scheduler.ev_priority.get(d.id, "public") if cfg.scheduler
                    else "public")
            out[d.id] = prio
    return out


def compute(run: RunResult, cfg: SiteConfig, tariff: Tariff) -> Kpis:
    a = run.trace.arrays()
    h = run.step_s / 3600.0
    grid = a["grid"]
    imp = np.maximum(grid, 0.0)
    exp = np.maximum(-grid, 0.0)
    tz = cfg.site.timezone
    prices = np.asarray([tariff.price_at(float(t), tz) for t in a["t"]]).reshape(-1, 2)
    cost = float(np.sum(imp * prices[:, 0] - exp * prices[:, 1]) * h)
    pv_kwh = float(np.sum(a["pv"]) * h)
    exp_kwh = float(np.sum(exp) * h)
    sc = (pv_kwh - min(exp_kwh, pv_kwh)) / pv_kwh * 100.0 if pv_kwh > 1e-6 else None
    k = Kpis(float(imp.max()) if imp.size else 0.0, cost, float(np.sum(imp) * h), exp_kwh, sc)
    prio = ev_priority(cfg)
    for c in CLASSES:
        k.ev_requested_kwh[c] = k.ev_delivered_kwh[c] = 0.0
        k.ev_missed[c] = k.ev_sessions[c] = 0
    for dev_id, s in run.sessions:
        if s.departure_s > run.end_s:
            k.ev_open += 1
            k.ev_open_kwh += s.delivered_kwh
            continue
        c = prio.get(dev_id, "public")
        k.ev_sessions[c] += 1
        k.ev_requested_kwh[c] += s.energy_kwh
        k.ev_delivered_kwh[c] += max(0.0, s.delivered_kwh)
        if s.wants_kwh > MISSED_TOLERANCE_KWH:
            k.ev_missed[c] += 1
    if a["stored"].size:
        k.stored_change_kwh = float(a["stored"][-1]) - run.stored_start_kwh
    buy_back = float(prices[:, 0].min()) if prices.size else 0.0
    k.stored_value = (k.stored_change_kwh / run.eta_charge + k.ev_open_kwh) * buy_back
    k.net_cost = cost - k.stored_value
    k.v2g_kwh = float(np.sum(a["v2g"]) * h)
    k.shed_kwh = float(np.sum(a["shed"]) * h)
    gl = cfg.site.grid
    over = np.zeros_like(grid)
    if gl.import_limit_kw is not None:
        over = np.maximum(over, grid - gl.import_limit_kw)
    if gl.export_limit_kw is not None:
        over = np.maximum(over, -grid - gl.export_limit_kw)
    bad = over > LIMIT_TOLERANCE_KW
    k.violations = _episodes(bad)
    k.violation_min = float(np.sum(bad)) * run.step_s / 60.0
    k.violation_kwh = float(np.sum(np.where(bad, over, 0.0)) * h)
    k.violation_max_kw = float(over.max()) if over.size and bad.any() else 0.0
    return k


def _fmt(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def table(results: list[tuple[RunResult, Kpis]], currency: str) -> str:
    """Fixed-width KPI table, one column per run; the first column names the figure."""
    rows: list[tuple[str, list[str]]] = [
        ("peak import kW", [_fmt(k.peak_import_kw) for _, k in results]),
        (f"energy cost {currency}", [_fmt(k.energy_cost, 2) for _, k in results]),
        ("grid import kWh", [_fmt(k.import_kwh) for _, k in results]),
        ("grid export kWh", [_fmt(k.export_kwh) for _, k in results]),
        ("self-consumption %", [_fmt(k.self_consumption_pct) for _, k in results]),
        ("battery stored, end - start kWh", [_fmt(k.stored_change_kwh) for _, k in results]),
    ]
    if any(k.ev_open for _, k in results):
        rows.append(("EV energy in cars still plugged kWh",
                     [_fmt(k.ev_open_kwh) for _, k in results]))
    rows += [
        (f"stored energy value {currency}", [_fmt(k.stored_value, 2) for _, k in results]),
        (f"net cost {currency}", [_fmt(k.net_cost, 2) for _, k in results]),
    ]
    for c in CLASSES:
        if any(k.ev_sessions[c] for _, k in results):
            rows.append((f"EV {c} delivered/requested kWh",
                         [f"{k.ev_delivered_kwh[c]:.1f}/{k.ev_requested_kwh[c]:.1f}"
                          for _, k in results]))
            rows.append((f"EV {c} missed deadlines",
                         [f"{k.ev_missed[c]}/{k.ev_sessions[c]}" for _, k in results]))
    rows += [
        ("EV sessions open at end", [str(k.ev_open) for _, k in results]),
        ("V2G kWh", [_fmt(k.v2g_kwh) for _, k in results]),
        ("shed load kWh", [_fmt(k.shed_kwh) for _, k in results]),
        ("limit violations", [str(k.violations) for _, k in results]),
        ("minutes over limits", [_fmt(k.violation_min, 0) for _, k in results]),
        ("kWh over limits", [_fmt(k.violation_kwh, 2) for _, k in results]),
        ("worst excess kW", [_fmt(k.violation_max_kw, 2) for _, k in results]),
    ]
    head = ["KPI", *[RUN_TITLES[r.name] for r, _ in results]]
    w0 = max(len(head[0]), *(len(r[0]) for r in rows))
    widths = [max(len(head[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(results))]
    lines = ["  ".join([head[0].ljust(w0), *(h.rjust(w) for h, w in
                                            zip(head[1:], widths, strict=True))])]
    lines.append("-" * len(lines[0]))
    for name, vals in rows:
        lines.append("  ".join([name.ljust(w0), *(v.rjust(w) for v, w in
                                                 zip(vals, widths, strict=True))]))
    return "\n".join(lines)
