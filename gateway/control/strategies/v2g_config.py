"""``control.strategies.v2g``: the guard on what a car may give back (vehicle to grid)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.control.strategies.section import Pct, StrategySection


class V2gConfig(StrategySection):
    min_soc_pct: Pct = 30.0  # never discharge a car below this (or its departure need)
    margin_h: Annotated[float, Field(ge=0, le=24)] = 1.0  # time kept to recharge
