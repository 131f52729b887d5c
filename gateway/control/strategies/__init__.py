"""Site-control strategies, one module each. Each has a ``name`` and ``apply(site, d)``:
it reads the cycle's Site and edits the Decision. The controller runs them from the lowest
priority to the highest, so a higher-priority strategy has the last word:
emergency > grid limits > protection margins > EV deadlines > peak shaving >
self-consumption > time-of-use (a fresh scheduler plan replaces the last two).
"""

from __future__ import annotations

from gateway.control.strategies.base import Strategy
from gateway.control.strategies.emergency import EmergencyModes
from gateway.control.strategies.ev_charging import EvCharging
from gateway.control.strategies.grid_limits import GridLimits
from gateway.control.strategies.margins import ProtectionMargins
from gateway.control.strategies.peak_shaving import PeakShaving
from gateway.control.strategies.plan_tracking import PlanTracking
from gateway.control.strategies.self_consumption import SelfConsumption
from gateway.control.strategies.time_of_use import TimeOfUse


def pipeline() -> list[Strategy]:
    """All strategies, lowest priority first (the order they run in)."""
    return check_handoffs([TimeOfUse(), SelfConsumption(), PlanTracking(), EvCharging(),
                           PeakShaving(), ProtectionMargins(), GridLimits(), EmergencyModes()])


def check_handoffs(strategies: list[Strategy]) -> list[Strategy]:
    """Refuse an order in which a strategy reads a ``site.handoff`` field before the one
    that writes it has run (it would always see the empty value). A strategy names what
    it ``reads`` and ``writes``; the order is priority, so this keeps it honest."""
    written: set[str] = set()
    writers = {f: s.name for s in strategies for f in getattr(s, "writes", ())}
    for s in strategies:
        for f in sorted(getattr(s, "reads", ())):
            if f not in written:
                by = writers.get(f)
                raise ValueError(f"strategy '{s.name}' reads handoff '{f}' before "
                                 + (f"'{by}' writes it" if by else "anything writes it"))
        written |= set(getattr(s, "writes", ()))
    return strategies


__all__ = [
    "EmergencyModes",
    "EvCharging",
    "GridLimits",
    "PeakShaving",
    "PlanTracking",
    "ProtectionMargins",
    "SelfConsumption",
    "Strategy",
    "TimeOfUse",
    "check_handoffs",
    "pipeline",
]
