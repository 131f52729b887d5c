"""Turn a decision into setpoints that are safe to write: operator overrides (until they
expire), protection lockouts (zero, always immediately), clamps to the device's ratings and
to what it says it can do now, and ramp-rate limits. A value that is not a finite number
(NaN, infinity) never reaches a device: the last value (or zero) is kept and it is reported.
Overrides on writable points no strategy drives (a wind turbine's limit, a BMS current
limit, ...) are held here too, so every writable point has one write path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.config.models import Device
from gateway.control.context import Decision, Site
from gateway.model import NATURES, Nature, PointValue, Quality
from gateway.state import SiteState

Setpoints = dict[str, dict[str, PointValue]]
# Points a strategy drives for a device in the Site view; an override on one of them only
# applies while the device is in the view (a battery without a usable SOC is not).
VIEW_POINTS: dict[Nature, frozenset[str]] = {
    Nature.BESS: frozenset({"p_set_kw", "grid_forming"}),
    Nature.EVSE: frozenset({"p_set_kw", "enabled"}),
    Nature.PV_INVERTER: frozenset({"p_limit_pct"}),
    Nature.LOAD: frozenset({"enabled"}),
}
COMMAND_POINTS = frozenset({"trip", "close"})  # one-shot commands, never held


@dataclass
class Override:
    device: str
    point: str
    value: PointValue
    expires_s: float
    user: str
    set_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "point": self.point, "value": self.value,
                "expires_s": self.expires_s, "user": self.user, "set_s": self.set_s}


def _clamp(x: float, lo: float, hi: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")  # callers check first; never pass
    return lo if x < lo else hi if x > hi else x


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def ramp(prev: float | None, target: float, rate: float | None, dt: float) -> float:
    if prev is None or rate is None or dt <= 0:
        return target
    step = rate * dt
    return _clamp(target, prev - step, prev + step)


def build_setpoints(site: Site, d: Decision, devices: dict[str, Device],
                    last: Setpoints, dt: float, overrides: dict[tuple[str, str], Override],
                    lockouts: dict[str, str], problems: list[str] | None = None,
                    state: SiteState | None = None, qnow: float | None = None,
                    derates: dict[str, float] | None = None) -> Setpoints:
    """One setpoint per controllable, online device (offline ones are not in ``site``).
    ``problems`` collects the non-finite values refused; with ``state``, held overrides on
    points no strategy drives are added for devices that are online at ``qnow``."""
    out: Setpoints = {}
    estop = site.mode == "estop"
    found = problems if problems is not None else []

    def rate(dev_id: str) -> float | None:
        dc = devices[dev_id].control if dev_id in devices else None
        return dc.ramp_kw_per_s if dc else None

    def prev(dev_id: str, point: str) -> float | None:
        v = last.get(dev_id, {}).get(point)
        return float(v) if isinstance(v, int | float) else None

    def ov(dev_id: str, point: str, value: PointValue) -> PointValue:
        o = overrides.get((dev_id, point))
        if o is None or estop:
            return value
        if is_number(o.value) and not math.isfinite(float(o.value)):
            found.append(f"override by {o.user} on {dev_id}.{point} = {o.value}: refused")
            return value
        return o.value

    def finite(dev_id: str, point: str, want: float, fallback: float) -> float:
        if math.isfinite(want):
            return want
        keep = prev(dev_id, point)
        keep = keep if keep is not None and math.isfinite(keep) else fallback
        found.append(f"{dev_id}.{point} = {want}: refused, kept {keep:g}")
        return keep

    for b in site.batteries:
        r = devices[b.id].ratings if b.id in devices else None
        hi = min(b.discharge_max_kw, r.p_discharge_max_kw or r.p_max_kw or 1e9) if r \
            else b.discharge_max_kw
        lo = -min(b.charge_max_kw, r.p_charge_max_kw or r.p_max_kw or 1e9) if r \
            else -b.charge_max_kw
        if derates and b.id in derates:  # its BMS is silent: protection derated it
            hi, lo = hi * derates[b.id], lo * derates[b.id]
        want = finite(b.id, "p_set_kw", float(ov(b.id, "p_set_kw", d.battery_kw.get(b.id, 0.0))),
                      0.0)
        if b.id in lockouts or estop:
            p = 0.0
        else:
            p = ramp(prev(b.id, "p_set_kw"), _clamp(want, lo, hi), rate(b.id), dt)
        out[b.id] = {"p_set_kw": round(p, 3)}
        if b.grid_forming is not None and (b.id in d.grid_forming
                                           or (b.id, "grid_forming") in overrides):
            out[b.id]["grid_forming"] = bool(ov(b.id, "grid_forming",
                                                d.grid_forming.get(b.id, b.grid_forming)))
    for c in site.chargers:
        want = finite(c.id, "p_set_kw", float(ov(c.id, "p_set_kw", d.ev_kw.get(c.id, 0.0))),
                      0.0)
        lo = -c.discharge_max_kw if (c.session and c.session.v2g_capable) else 0.0
        if c.id in lockouts or estop:
            p = 0.0
        else:
            p = ramp(prev(c.id, "p_set_kw"), _clamp(want, lo, c.p_max_kw), rate(c.id), dt)
        out[c.id] = {"p_set_kw": round(p, 3),
                     "enabled": bool(ov(c.id, "enabled", not (estop or c.id in lockouts)))}
    for pv in site.pvs:
        lim = finite(pv.id, "p_limit_pct",
                     float(ov(pv.id, "p_limit_pct", d.pv_limit_pct.get(pv.id, 100.0))), 0.0)
        if pv.id in lockouts or estop:
            lim = 0.0
        out[pv.id] = {"p_limit_pct": round(_clamp(lim, 0.0, 100.0), 2)}
    for ld in site.loads:
        on = bool(ov(ld.id, "enabled", d.load_on.get(ld.id, ld.enabled)))
        out[ld.id] = {"enabled": on and ld.id not in lockouts}
    if state is not None and not estop:
        _held_overrides(out, site, devices, overrides, lockouts, state, qnow, found)
    return out


def _held_overrides(out: Setpoints, site: Site, devices: dict[str, Device],
                    overrides: dict[tuple[str, str], Override], lockouts: dict[str, str],
                    state: SiteState, qnow: float | None, found: list[str]) -> None:
    """Overrides on writable points no strategy drives, for online devices, clamped where
    a range or rating applies (percentages 0..100, currents 0..ratings.i_max_a)."""
    visible = {x.id for xs in (site.batteries, site.chargers, site.pvs, site.loads)
               for x in xs}
    now = site.now if qnow is None else qnow
    for (dev_id, point), o in overrides.items():
        dev = state.devices.get(dev_id)
        if dev is None or point in COMMAND_POINTS or point in out.get(dev_id, {}) \
                or dev_id in lockouts or dev.device_quality(now) is not Quality.GOOD:
            continue
        if point in VIEW_POINTS.get(dev.nature, ()) and dev_id not in visible:
            continue
        spec = NATURES[dev.nature].get(point)
        if spec is None or not spec.writable:
            continue
        value = o.value
        if is_number(value):
            v = float(value)
            if not math.isfinite(v):
                found.append(f"override by {o.user} on {dev_id}.{point} = {v}: refused")
                continue
            hi = math.inf
            if point.endswith("_pct"):
                hi = 100.0
            elif point.endswith("_a"):
                cfgdev = devices.get(dev_id)
                imax = cfgdev.ratings.i_max_a if cfgdev is not None else None
                hi = imax if imax is not None else math.inf
            value = max(0.0, min(v, hi))
        out.setdefault(dev_id, {})[point] = value
