"""Turn a decision into setpoints that are safe to write: operator overrides (until they
expire), protection lockouts (zero, always immediately), clamps to the device's ratings and
to what it says it can do now, and ramp-rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.models import Device
from gateway.control.context import Decision, Site
from gateway.model import PointValue

Setpoints = dict[str, dict[str, PointValue]]


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
    return lo if x < lo else hi if x > hi else x


def ramp(prev: float | None, target: float, rate: float | None, dt: float) -> float:
    if prev is None or rate is None or dt <= 0:
        return target
    step = rate * dt
    return _clamp(target, prev - step, prev + step)


def build_setpoints(site: Site, d: Decision, devices: dict[str, Device],
                    last: Setpoints, dt: float, overrides: dict[tuple[str, str], Override],
                    lockouts: dict[str, str]) -> Setpoints:
    """One setpoint per controllable, online device (offline ones are not in ``site``)."""
    out: Setpoints = {}
    estop = site.mode == "estop"

    def rate(dev_id: str) -> float | None:
        dc = devices[dev_id].control if dev_id in devices else None
        return dc.ramp_kw_per_s if dc else None

    def prev(dev_id: str, point: str) -> float | None:
        v = last.get(dev_id, {}).get(point)
        return float(v) if isinstance(v, int | float) else None

    def ov(dev_id: str, point: str, value: PointValue) -> PointValue:
        o = overrides.get((dev_id, point))
        return o.value if o is not None and not estop else value

    for b in site.batteries:
        r = devices[b.id].ratings if b.id in devices else None
        hi = min(b.discharge_max_kw, r.p_discharge_max_kw or r.p_max_kw or 1e9) if r \
            else b.discharge_max_kw
        lo = -min(b.charge_max_kw, r.p_charge_max_kw or r.p_max_kw or 1e9) if r \
            else -b.charge_max_kw
        want = float(ov(b.id, "p_set_kw", d.battery_kw.get(b.id, 0.0)))
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
        want = float(ov(c.id, "p_set_kw", d.ev_kw.get(c.id, 0.0)))
        lo = -c.discharge_max_kw if (c.session and c.session.v2g_capable) else 0.0
        if c.id in lockouts or estop:
            p = 0.0
        else:
            p = ramp(prev(c.id, "p_set_kw"), _clamp(want, lo, c.p_max_kw), rate(c.id), dt)
        out[c.id] = {"p_set_kw": round(p, 3),
                     "enabled": bool(ov(c.id, "enabled", not (estop or c.id in lockouts)))}
    for pv in site.pvs:
        lim = float(ov(pv.id, "p_limit_pct", d.pv_limit_pct.get(pv.id, 100.0)))
        if pv.id in lockouts or estop:
            lim = 0.0
        out[pv.id] = {"p_limit_pct": round(_clamp(lim, 0.0, 100.0), 2)}
    for ld in site.loads:
        on = bool(ov(ld.id, "enabled", d.load_on.get(ld.id, ld.enabled)))
        out[ld.id] = {"enabled": on and ld.id not in lockouts}
    return out
