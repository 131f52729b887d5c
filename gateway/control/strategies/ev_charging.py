"""EV smart charging: every car gets the power that still meets its deadline (emergency
vehicles first, then fleet, then public; least laxity first within a class), then the
headroom under the peak threshold and the PV surplus are shared by class, fairly (equal
shares, water-filling) among equals. Per-charger ratings and a site EV limit apply.
While a scheduler plan is tracked, a car gets at least its planned power and, beyond
that, only PV surplus: the plan already chose the cheapest hours for the rest."""

from __future__ import annotations

from gateway.control.context import ChargerView, Decision, Site, battery_room, predicted_grid
from gateway.control.sessions import EvSession
from gateway.control.strategies.ev_charging_config import EvChargingConfig

# With a plan, a car is charged ahead of it only when the rest of its energy would no
# longer fit after this much time at this share of its power (forecasts err, plans age,
# and a car slows down as it fills up: most taper above 80 % SOC)
PLAN_GUARD_H = 1.0
PLAN_GUARD_SHARE = 0.8
# what a car takes until it has shown otherwise: a common on-board charger (3 x 16 A);
# the guard must not count on a 22 kW wallbox's rating for a car that takes half of it
CAR_GUESS_KW = 11.0


def deadline_kw(s: EvSession, now: float, p_max_kw: float, planned: bool) -> float:
    """Power the car needs now for its deadline. Without a plan: spread evenly to the
    departure. With one: only what could not be delivered at full power later (the plan
    chose when the rest comes: PV surplus, the cheap hours)."""
    if not planned:
        return s.min_power_kw(now)
    left = s.time_left_h(now)
    p = PLAN_GUARD_SHARE * (p_max_kw if s.car_max_kw is not None
                            else min(p_max_kw, CAR_GUESS_KW))
    hours = s.hours_to_deliver(p)
    if left <= PLAN_GUARD_H or hours >= left:
        return max(s.min_power_kw(now), p_max_kw if s.need_kwh > 0 else 0.0)
    p_avg = s.need_kwh / hours if hours > 0 else p  # what it gets through, taper and all
    return max(0.0, s.need_kwh - p_avg * (left - PLAN_GUARD_H)) / PLAN_GUARD_H


def _order(site: Site, chargers: list[ChargerView]) -> list[ChargerView]:
    def key(c: ChargerView) -> tuple[int, float]:
        s = c.session
        assert s is not None
        return (s.rank(), s.laxity_h(site.now, c.p_max_kw))
    return sorted(chargers, key=key)


def water_fill(caps: dict[str, float], amount: float) -> dict[str, float]:
    """Equal shares of ``amount``, none above its cap; the rest goes to the others."""
    out = {k: 0.0 for k in caps}
    left = dict(caps)
    while amount > 1e-9 and left:
        share = amount / len(left)
        for k, cap in list(left.items()):
            give = min(share, cap - out[k])
            out[k] += give
            amount -= give
            if out[k] >= cap - 1e-9:
                del left[k]
    return out


class EvCharging:
    name = "ev_charging"
    reads = frozenset({"plan_ev_kw"})
    writes = frozenset({"ev_must_kw"})

    def __init__(self, cfg: EvChargingConfig) -> None:
        self.cfg = cfg

    def enabled(self, site: Site) -> bool:
        return self.cfg.enabled and bool(site.chargers)

    def apply(self, site: Site, d: Decision) -> None:
        now = site.now
        cars = [c for c in site.chargers if c.session is not None and c.session.need_kwh > 0]
        for c in site.chargers:
            d.ev_kw[c.id] = 0.0
        site_left = self.cfg.site_limit_kw if self.cfg.site_limit_kw is not None \
            else float("inf")
        tracking = site.handoff.plan_ev_kw is not None
        planned = site.handoff.plan_ev_kw or {}
        if site.limits_enforced and site.import_limit_kw is not None:
            base0 = predicted_grid(site, d)  # every car at 0
            if base0 is not None:  # the hard limit bounds even deadline power
                room = sum(battery_room(site, d, True, reserve=False).values())
                site_left = min(site_left, max(0.0, site.import_limit_kw - base0 + room))
        must: dict[str, float] = {}
        groups: dict[tuple[int, float], list[ChargerView]] = {}
        for c in _order(site, cars):  # by class, then laxity; equals share fairly
            assert c.session is not None
            key = (c.session.rank(), round(c.session.laxity_h(now, c.p_max_kw), 1))
            groups.setdefault(key, []).append(c)
        for key in sorted(groups):
            wants = {}
            for c in groups[key]:
                assert c.session is not None
                wants[c.id] = min(c.p_max_kw, max(deadline_kw(c.session, now, c.p_max_kw,
                                                              tracking),
                                                  planned.get(c.id, 0.0)))
            got = water_fill(wants, min(sum(wants.values()), max(0.0, site_left)))
            for k, v in got.items():
                must[k] = v
                d.ev_kw[k] = v
                site_left -= v
        base = predicted_grid(site, d)
        cap = site.peak_threshold_kw if site.peak_threshold_kw is not None \
            else site.import_limit_kw
        if base is None:
            headroom = 0.0  # no PCC reading: deadlines only
        elif cap is None:
            headroom = float("inf")
        else:
            headroom = max(0.0, cap - base)
        if tracking:  # a plan chose when cars charge: beyond it,
            headroom = min(headroom, max(0.0, -(base or 0.0)))  # only the PV surplus
            if not self.cfg.pv_surplus:
                headroom = 0.0
        elif site.price is not None and site.price[0] >= site.expensive_above_per_kwh:
            headroom = min(headroom, max(0.0, -(base or 0.0)))  # dear: PV surplus only
        elif not self.cfg.pv_surplus and base is not None and base < 0:
            headroom = max(0.0, headroom + base)
        extra = min(headroom, site_left)
        for rank in (0, 1, 2):
            group = [c for c in cars if c.session is not None and c.session.rank() == rank]
            caps = {c.id: c.p_max_kw - must[c.id] for c in group}
            got = water_fill(caps, extra)
            for k, v in got.items():
                d.ev_kw[k] += v
                extra -= v
        total = sum(d.ev_kw.values())
        d.note(self.name, f"{len(cars)} cars, {total:.1f} kW "
                          f"({sum(must.values()):.1f} kW for deadlines)")
        site.handoff.ev_must_kw = must
