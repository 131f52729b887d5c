"""Plan tracking: with a fresh optimal scheduler plan, the battery follows the planned
setpoint, corrected in real time toward the planned grid import; EVs get their planned
power (EV charging reads ``site.handoff.plan_ev_kw``; deadlines still come first).

The correction is the forecast error only: it is measured with every car at its planned
power, so a car that charges off plan (a deadline, PV surplus) is not paid for from the
battery, and a battery the plan keeps for the evening peak is not drained into a car."""

from __future__ import annotations

from gateway.control.context import ChargerView, Decision, Site, predicted_grid
from gateway.control.strategies.plan_tracking_config import PlanTrackingConfig


def planned_ev_kw(c: ChargerView, planned: dict[str, float]) -> float:
    """What the plan has a charger draw now, within what the car there can take."""
    p = planned.get(c.id, 0.0)
    if p > 0 and (c.session is None or c.session.need_kwh <= 0):
        return 0.0  # no car, or it has what it wanted: it draws nothing
    return max(-c.discharge_max_kw, min(c.p_max_kw, p))


class PlanTracking:
    name = "plan_tracking"
    writes = frozenset({"plan_ev_kw"})

    def __init__(self, cfg: PlanTrackingConfig) -> None:
        self.cfg = cfg

    def enabled(self, site: Site) -> bool:
        """A plan older than ``stale_s`` is not followed (the rules take over)."""
        return (self.cfg.enabled and site.plan_step is not None and site.mode == "normal"
                and site.plan_age_s is not None and site.plan_age_s <= self.cfg.stale_s)

    def apply(self, site: Site, d: Decision) -> None:
        step = site.plan_step
        assert step is not None
        for b in site.batteries:
            d.battery_kw[b.id] = step.battery_p_kw.get(b.id, 0.0)
        site.handoff.plan_ev_kw = dict(step.ev_p_kw)
        as_planned = Decision(battery_kw=dict(d.battery_kw),
                              ev_kw={c.id: planned_ev_kw(c, step.ev_p_kw)
                                     for c in site.chargers},
                              pv_limit_pct=dict(d.pv_limit_pct), load_on=dict(d.load_on))
        g = predicted_grid(site, as_planned)
        if g is not None and site.batteries:
            err = g - step.grid_p_kw  # forecast error: the battery takes it
            share = err / len(site.batteries)
            for b in site.batteries:
                d.battery_kw[b.id] = max(-b.charge_max_kw,
                                         min(b.discharge_max_kw, d.battery_kw[b.id] + share))
        d.note(self.name, f"tracking plan step at {step.start_s:.0f} "
                          f"(grid {step.grid_p_kw:.1f} kW planned)")
