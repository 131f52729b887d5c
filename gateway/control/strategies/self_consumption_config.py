"""``control.strategies.self_consumption``: store PV surplus, cover load from the battery."""

from __future__ import annotations

from gateway.control.strategies.section import Pct, StrategySection


class SelfConsumptionConfig(StrategySection):
    # battery kept for backup: no strategy discharges below it for economics (peak
    # shaving and protection margins keep it too; only a grid limit may use it)
    reserve_soc_pct: Pct = 20.0
