"""Plan tracking: with a fresh optimal scheduler plan, the battery follows the planned
setpoint, corrected in real time toward the planned grid import; EVs get at least their
planned power (EV charging reads ``memory['plan_ev_kw']``)."""

from __future__ import annotations

from gateway.control.context import Decision, Site, predicted_grid


class PlanTracking:
    name = "plan_tracking"

    def enabled(self, site: Site) -> bool:
        return site.cfg.plan_tracking and site.plan_step is not None and site.mode == "normal"

    def apply(self, site: Site, d: Decision) -> None:
        step = site.plan_step
        assert step is not None
        for b in site.batteries:
            d.battery_kw[b.id] = step.battery_p_kw.get(b.id, 0.0)
        site.memory["plan_ev_kw"] = dict(step.ev_p_kw)
        g = predicted_grid(site, d)
        if g is not None and site.batteries:
            err = g - step.grid_p_kw  # forecast error: the battery takes it
            share = err / len(site.batteries)
            for b in site.batteries:
                d.battery_kw[b.id] = max(-b.charge_max_kw,
                                         min(b.discharge_max_kw, d.battery_kw[b.id] + share))
        d.note(self.name, f"tracking plan step at {step.start_s:.0f} "
                          f"(grid {step.grid_p_kw:.1f} kW planned)")
