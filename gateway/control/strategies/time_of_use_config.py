"""``control.strategies.time_of_use``: charge cheap, cover load when dear (needs the
top-level ``tariff:`` section, prices per kWh)."""

from __future__ import annotations

from gateway.control.strategies.section import Pct, StrategySection


class TimeOfUseConfig(StrategySection):
    cheap_below_per_kwh: float = 0.15  # import price at or below which the battery charges
    expensive_above_per_kwh: float = 0.35  # at or above: discharge to cover load (and EVs
    #                                         take PV surplus only)
    target_soc_pct: Pct = 90.0  # cheap charging stops here
