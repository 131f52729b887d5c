"""Site-control strategies, one module each. Each has a ``name`` and ``apply(site, d)``:
it reads the cycle's Site and edits the Decision. Each owns its config section
(``control.strategies.<name>``, declared in ``<name>_config.py`` beside it) and is given
it when the pipeline is built; what one strategy's section tells the others (the backup
reserve, the peak threshold, the V2G guard) reaches them through the Site. The controller
runs them from the lowest priority to the highest, so a higher-priority strategy has the
last word:
emergency > grid limits > protection margins > EV deadlines > peak shaving >
self-consumption > time-of-use (a fresh scheduler plan replaces the last two).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.control.config import Strategies
    from gateway.control.strategies.base import Strategy
    from gateway.control.strategies.emergency import EmergencyModes
    from gateway.control.strategies.ev_charging import EvCharging
    from gateway.control.strategies.grid_limits import GridLimits
    from gateway.control.strategies.margins import ProtectionMargins
    from gateway.control.strategies.peak_shaving import PeakShaving
    from gateway.control.strategies.plan_tracking import PlanTracking
    from gateway.control.strategies.self_consumption import SelfConsumption
    from gateway.control.strategies.time_of_use import TimeOfUse

# The strategies' code loads on first use: the config schema imports this package's
# *_config modules (the sections) without loading the strategies and what they import.
_LAZY = {"Strategy": "base", "EmergencyModes": "emergency", "EvCharging": "ev_charging",
         "GridLimits": "grid_limits", "ProtectionMargins": "margins",
         "PeakShaving": "peak_shaving", "PlanTracking": "plan_tracking",
         "SelfConsumption": "self_consumption", "TimeOfUse": "time_of_use"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


def pipeline(cfg: Strategies) -> list[Strategy]:
    """All strategies, lowest priority first (the order they run in), each given its own
    config section."""
    from gateway.control.strategies.emergency import EmergencyModes
    from gateway.control.strategies.ev_charging import EvCharging
    from gateway.control.strategies.grid_limits import GridLimits
    from gateway.control.strategies.margins import ProtectionMargins
    from gateway.control.strategies.peak_shaving import PeakShaving
    from gateway.control.strategies.plan_tracking import PlanTracking
    from gateway.control.strategies.self_consumption import SelfConsumption
    from gateway.control.strategies.time_of_use import TimeOfUse
    return check_handoffs([TimeOfUse(cfg.time_of_use), SelfConsumption(cfg.self_consumption),
                           PlanTracking(cfg.plan_tracking), EvCharging(cfg.ev_charging),
                           PeakShaving(cfg.peak_shaving), ProtectionMargins(),
                           GridLimits(cfg.grid_limits, cfg.load_shedding), EmergencyModes()])


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
