"""Peak shaving: keep the import under the threshold with the battery (above its reserve),
then by trimming EV power above what deadlines need, then with V2G cars."""

from __future__ import annotations

from gateway.control.context import Decision, Site, battery_room, predicted_grid, spread
from gateway.control.strategies.peak_shaving_config import PeakShavingConfig
from gateway.control.strategies.v2g import discharge_cars


class PeakShaving:
    name = "peak_shaving"
    reads = frozenset({"ev_must_kw"})

    def __init__(self, cfg: PeakShavingConfig) -> None:
        self.cfg = cfg

    def enabled(self, site: Site) -> bool:
        return (self.cfg.enabled and site.grid_kw is not None
                and self.cfg.threshold_for(site.import_limit_kw) is not None
                and site.mode == "normal")

    def apply(self, site: Site, d: Decision) -> None:
        thr = self.cfg.threshold_for(site.import_limit_kw)
        g = predicted_grid(site, d)
        assert thr is not None and g is not None
        over = g - thr
        if over <= 0:
            return
        for k, v in spread(battery_room(site, d, discharge=True), over).items():
            d.battery_kw[k] = d.battery_kw.get(k, 0.0) + v
            over -= v
        must = site.handoff.ev_must_kw
        for c in sorted(site.chargers, key=lambda c: -(c.session.rank() if c.session else 9)):
            if over <= 1e-9:
                break
            cut = min(over, max(0.0, d.ev_kw.get(c.id, 0.0) - must.get(c.id, 0.0)))
            d.ev_kw[c.id] = d.ev_kw.get(c.id, 0.0) - cut
            over -= cut
        v2g = discharge_cars(site, d.ev_kw, over) if over > 1e-9 else 0.0
        over -= v2g
        d.note(self.name, f"shaving to {thr:.1f} kW" + (f", V2G {v2g:.1f} kW" if v2g else "")
               + (f", {over:.1f} kW left" if over > 1e-6 else ""))
