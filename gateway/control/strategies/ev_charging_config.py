"""``control.strategies.ev_charging``: deadlines, priorities, fair shares, PV surplus."""

from __future__ import annotations

from gateway.control.strategies.section import Kw, StrategySection


class EvChargingConfig(StrategySection):
    pv_surplus: bool = True  # give EVs the PV surplus the battery does not take
    site_limit_kw: Kw | None = None  # all chargers together
