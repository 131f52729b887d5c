"""EV sessions as the gateway knows them: arrival, departure, energy wanted, priority class,
V2G consent and the SOC the driver needs at departure.

What the charger reports (connected, ev_soc_pct, v2g, e_session_kwh, and the ISO 15118
departure time / energy request when the car sends them) comes first; an operator can
override departure, energy, priority and V2G consent; the charger's config gives defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.control.config import CLASS_RANK, EvDefaults

HISTORY = 50
CAPACITY_GUESS_KWH = 60.0  # a car's battery until its SOC and energy say otherwise
TAPER_FROM_PCT = 80.0  # most cars slow down above this SOC, to a trickle when full
TAPER_FLOOR = 0.05  # share of full power left at the very top


@dataclass
class EvSession:
    charger: str
    arrival_s: float
    departure_s: float
    energy_kwh: float  # wanted this session (total)
    priority: str
    v2g_allowed: bool
    departure_soc_pct: float
    delivered_kwh: float = 0.0
    soc_pct: float | None = None
    v2g_capable: bool = False
    ended_s: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # set by operators
    # the most this car has been seen to take (a 22 kW wallbox often meets an 11 kW car);
    # None until it was offered more than it took
    car_max_kw: float | None = None
    soc_first_pct: float | None = None  # SOC and energy when the car first told its SOC
    delivered_first_kwh: float = 0.0

    @property
    def need_kwh(self) -> float:
        return max(0.0, self.energy_kwh - self.delivered_kwh)

    def time_left_h(self, now: float) -> float:
        return max(0.0, (self.departure_s - now) / 3600.0)

    def min_power_kw(self, now: float) -> float:
        """Average power that still meets the deadline."""
        left = self.time_left_h(now)
        return self.need_kwh / left if left > 1e-6 else (float("inf") if self.need_kwh else 0.0)

    def laxity_h(self, now: float, p_max_kw: float) -> float:
        """Slack: hours the car could idle and still be charged by departure."""
        return self.time_left_h(now) - (self.need_kwh / p_max_kw if p_max_kw > 0 else 0.0)

    def observe_power(self, offered_kw: float, drawn_kw: float) -> None:
        """Learn the car's limit from a setpoint it has had time to follow: drawing clearly
        less than offered sets it, drawing more than the limit raises it. A car drawing
        (almost) nothing is paused or full, which says nothing about its charger."""
        if drawn_kw < 1.0 or self.need_kwh <= 0.5:
            return
        if self.soc_pct is not None and self.soc_pct >= TAPER_FROM_PCT:
            return  # slowed by its SOC, not its charger (hours_to_deliver knows that)
        tol = max(0.5, 0.1 * offered_kw)
        held_back = drawn_kw < offered_kw - tol
        above = self.car_max_kw is not None and drawn_kw > self.car_max_kw + tol
        if held_back or above:
            self.car_max_kw = drawn_kw

    def capacity_kwh(self) -> float:
        """The car's battery: energy delivered against SOC gained, once it gained 5 %."""
        if self.soc_first_pct is not None and self.soc_pct is not None:
            gained = self.soc_pct - self.soc_first_pct
            if gained >= 5.0:
                return max(1.0, (self.delivered_kwh - self.delivered_first_kwh) / gained
                           * 100.0)
        return CAPACITY_GUESS_KWH

    def hours_to_deliver(self, p_kw: float) -> float:
        """Hours to deliver what the car still needs at up to p_kw. With its SOC known,
        slower above TAPER_FROM_PCT: power falling linearly towards full, to a floor."""
        need = self.need_kwh
        if need <= 0:
            return 0.0
        if p_kw <= 0:
            return math.inf
        if self.soc_pct is None:
            return need / p_kw
        cap = self.capacity_kwh()
        soc, band = self.soc_pct, 100.0 - TAPER_FROM_PCT
        end = soc + need / cap * 100.0
        hours = max(0.0, min(end, TAPER_FROM_PCT) - soc) / 100.0 * cap / p_kw
        # distance from full (SOC points) where the taper starts, ends, and hits its floor
        x0, x1, floor = 100.0 - max(soc, TAPER_FROM_PCT), 100.0 - end, TAPER_FLOOR * band
        if x1 < x0:
            hours += band / 100.0 * cap / p_kw * math.log(max(x0, floor) / max(x1, floor))
            hours += max(0.0, min(x0, floor) - x1) / 100.0 * cap / (TAPER_FLOOR * p_kw)
        return hours

    def rank(self) -> int:
        return CLASS_RANK[self.priority]

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"charger": self.charger, "arrival_s": self.arrival_s,
                "departure_s": self.departure_s, "energy_kwh": self.energy_kwh,
                "delivered_kwh": self.delivered_kwh, "need_kwh": self.need_kwh,
                "priority": self.priority, "v2g_allowed": self.v2g_allowed,
                "v2g_capable": self.v2g_capable, "departure_soc_pct": self.departure_soc_pct,
                "soc_pct": self.soc_pct, "min_power_kw": self.min_power_kw(now)
                if self.ended_s is None else 0.0, "ended_s": self.ended_s,
                "overrides": dict(self.overrides)}


class SessionBook:
    """Sessions per charger, opened when a car connects and closed when it leaves."""

    def __init__(self, defaults: dict[str, EvDefaults]) -> None:
        self.defaults = defaults
        self.active: dict[str, EvSession] = {}
        self.history: list[EvSession] = []

    def observe(self, charger: str, now: float, connected: bool | None,
                points: dict[str, Any]) -> EvSession | None:
        """Update the charger's session from its readings; returns the active session."""
        s = self.active.get(charger)
        if not connected:
            if s is not None and connected is False:
                s.ended_s = now
                self.history.append(s)
                del self.history[:-HISTORY]
                del self.active[charger]
            return None if connected is False else s
        d = self.defaults.get(charger) or EvDefaults()
        if s is None:
            s = EvSession(charger, now, now + d.dwell_h * 3600.0, d.energy_kwh, d.priority,
                          d.v2g_allowed, d.departure_soc_pct)
            self.active[charger] = s
        delivered = points.get("e_session_kwh")
        if isinstance(delivered, int | float):
            s.delivered_kwh = float(delivered)
        soc = points.get("ev_soc_pct")
        s.soc_pct = float(soc) if isinstance(soc, int | float) and soc > 0 else None
        if s.soc_first_pct is None and s.soc_pct is not None:
            s.soc_first_pct, s.delivered_first_kwh = s.soc_pct, s.delivered_kwh
        s.v2g_capable = points.get("v2g") is True
        o = s.overrides
        dep = points.get("ev_departure_s")
        if "departure_s" in o:
            s.departure_s = float(o["departure_s"])
        elif isinstance(dep, int | float) and dep > 0:
            s.departure_s = now + float(dep)
        req = points.get("ev_energy_req_kwh")
        if "energy_kwh" in o:
            s.energy_kwh = float(o["energy_kwh"])
        elif isinstance(req, int | float) and req >= 0:
            s.energy_kwh = s.delivered_kwh + float(req)
        for key in ("priority", "v2g_allowed", "departure_soc_pct"):
            if key in o:
                setattr(s, key, o[key])
        return s

    def set(self, charger: str, **changes: Any) -> EvSession:
        """Operator changes to the active session of a charger (validated by the caller)."""
        s = self.active.get(charger)
        if s is None:
            raise KeyError(charger)
        for key, value in changes.items():
            s.overrides[key] = value
            setattr(s, key, value)
        return s
