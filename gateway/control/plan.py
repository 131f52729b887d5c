"""The scheduler's plan: per-step battery, EV and grid power the site controller tracks.

Shared contract between the scheduler (which writes ``controller.plan``) and the site
controller (which reads ``plan.at(now)``). Kept tiny and dependency-free on purpose.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class PlanStep:
    """One time step of a plan; powers are averages over [start_s, end_s)."""

    start_s: float
    end_s: float
    battery_p_kw: dict[str, float]  # bess device id -> planned AC power, + = discharge
    ev_p_kw: dict[str, float]  # evse device id -> planned power, + = charge
    grid_p_kw: float  # planned grid import, + = import


@dataclass(frozen=True)
class Plan:
    """A schedule over the horizon; status is "optimal" or "fallback: <why>"."""

    created_s: float
    steps: tuple[PlanStep, ...]
    solver: str
    status: str  # "optimal" | "fallback: <why>"

    def at(self, t_s: float) -> PlanStep | None:
        """The step covering time t_s, or None outside the plan (or for a fallback plan)."""
        if not self.steps:
            return None
        starts = [s.start_s for s in self.steps]
        i = bisect.bisect_right(starts, t_s) - 1
        if i < 0:
            return None
        step = self.steps[i]
        return step if t_s < step.end_s else None

    @property
    def ok(self) -> bool:
        """True when the plan came from a successful solve and may be tracked."""
        return self.status == "optimal"
