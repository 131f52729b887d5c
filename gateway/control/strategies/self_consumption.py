"""Self-consumption: the battery absorbs PV surplus and covers the load (grid -> 0),
unless time-of-use is charging it cheaply."""

from __future__ import annotations

from gateway.control.context import Decision, Site, predicted_grid, spread
from gateway.control.strategies.self_consumption_config import SelfConsumptionConfig


class SelfConsumption:
    name = "self_consumption"
    reads = frozenset({"tou_cheap"})

    def __init__(self, cfg: SelfConsumptionConfig) -> None:
        self.cfg = cfg

    def enabled(self, site: Site) -> bool:
        return self.cfg.enabled and site.grid_kw is not None and site.mode == "normal"

    def apply(self, site: Site, d: Decision) -> None:
        charging_cheap = site.handoff.tou_cheap and any(
            d.battery_kw.get(b.id, 0.0) < 0 for b in site.batteries)
        base = {b.id: d.battery_kw.get(b.id, 0.0) for b in site.batteries}
        for b in site.batteries:
            d.battery_kw[b.id] = 0.0
        g = predicted_grid(site, d)
        assert g is not None
        if g < 0:  # surplus: store it
            room = {b.id: b.charge_max_kw for b in site.batteries}
            for k, v in spread(room, -g).items():
                d.battery_kw[k] = min(-v, base[k]) if charging_cheap else -v
            d.note(self.name, f"storing {-g:.1f} kW surplus")
        elif charging_cheap:
            d.battery_kw.update(base)
        else:  # cover the load from the battery, above the backup reserve
            room = {b.id: b.discharge_max_kw if b.soc_pct > self.cfg.reserve_soc_pct else 0.0
                    for b in site.batteries}
            for k, v in spread(room, g).items():
                d.battery_kw[k] = v
            d.note(self.name, f"covering {g:.1f} kW of load")
