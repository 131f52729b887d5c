"""``control.strategies.plan_tracking``: follow the scheduler's plan while it is fresh."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.control.strategies.section import StrategySection


class PlanTrackingConfig(StrategySection):
    stale_s: Annotated[float, Field(gt=0)] = 1800.0  # an older plan is not followed
