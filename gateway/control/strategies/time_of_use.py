"""Time-of-use arbitrage: charge the battery when import is cheap, discharge when dear."""

from __future__ import annotations

from gateway.control.context import Decision, Site
from gateway.control.strategies.time_of_use_config import TimeOfUseConfig


class TimeOfUse:
    name = "time_of_use"
    writes = frozenset({"tou_cheap"})  # site.handoff fields (see check_handoffs)

    def __init__(self, cfg: TimeOfUseConfig) -> None:
        self.cfg = cfg

    def enabled(self, site: Site) -> bool:
        return self.cfg.enabled and site.price is not None and site.mode == "normal"

    def apply(self, site: Site, d: Decision) -> None:
        assert site.price is not None
        price = site.price[0]
        cfg = self.cfg
        for b in site.batteries:
            if price <= cfg.cheap_below_per_kwh and b.soc_pct < cfg.target_soc_pct:
                d.battery_kw[b.id] = -b.charge_max_kw
                d.note(self.name, f"cheap ({price:.3f}/kWh): charging")
            elif price >= cfg.expensive_above_per_kwh:
                d.note(self.name, f"expensive ({price:.3f}/kWh): discharging to cover load")
                continue
        site.handoff.tou_cheap = price <= cfg.cheap_below_per_kwh
