"""``control.strategies.grid_limits``: the hard import/export limits of ``site.grid``."""

from __future__ import annotations

from gateway.control.strategies.section import StrategySection


class GridLimitsConfig(StrategySection):
    pv_curtailment: bool = True  # curtail PV at the export limit (after the battery)
