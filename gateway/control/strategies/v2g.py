"""V2G guard: how much a car may give back now without missing the driver's needs.

Never below ``v2g.min_soc_pct`` or the session's departure SOC, and only while the energy
still wanted (plus what is taken now) can be recharged before departure at 80 % of the
charger's rating with ``v2g.margin_h`` to spare. The section (``control.strategies.v2g``,
v2g_config.py) reaches every strategy that discharges cars as ``site.v2g``. A car whose
SOC is unknown is not used.
"""

from __future__ import annotations

from gateway.control.context import ChargerView, Site

LOOKAHEAD_H = 0.25  # the discharge being allowed is assumed to last this long


def v2g_room_kw(site: Site, c: ChargerView) -> float:
    s = c.session
    if (s is None or not site.v2g.enabled or not s.v2g_allowed or not s.v2g_capable
            or c.discharge_max_kw <= 0 or s.soc_pct is None):
        return 0.0
    if s.soc_pct <= max(site.v2g.min_soc_pct, s.departure_soc_pct) + 1.0:
        return 0.0
    spare_h = s.time_left_h(site.now) - site.v2g.margin_h
    recharge_kwh = spare_h * 0.8 * c.p_max_kw - s.need_kwh
    if recharge_kwh <= 0:
        return 0.0
    return min(c.discharge_max_kw, recharge_kwh / LOOKAHEAD_H)


def discharge_cars(site: Site, ev_kw: dict[str, float], amount: float) -> float:
    """Lower V2G cars' power, into discharge, (public first, most slack first) by up to
    ``amount`` kW in total, editing ``ev_kw``; returns the kW found. A car's deadline
    power may be taken too, as the guard keeps time to recharge. Emergency vehicles are
    not used."""
    found = 0.0
    cars = [c for c in site.chargers if c.session is not None and c.session.priority
            != "emergency"]
    cars.sort(key=lambda c: (-c.session.rank() if c.session else 0,
                             -(c.session.laxity_h(site.now, c.p_max_kw) if c.session else 0)))
    for c in cars:
        if found >= amount:
            break
        room = v2g_room_kw(site, c)
        if room <= 0:
            continue
        now = ev_kw.get(c.id, 0.0)  # charging (+) or already discharging (-)
        take = min(room + now, amount - found)  # the guard leaves time to recharge
        if take > 0:
            ev_kw[c.id] = now - take
            found += take
    return found
