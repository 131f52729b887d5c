"""``control.strategies.load_shedding``: loads the grid limit may switch off, and when they
come back (grid_limits.py does both; an island sheds by its own rules, emergency.py)."""

from __future__ import annotations

from gateway.control.strategies.section import Kw, Seconds, StrategySection


class LoadSheddingConfig(StrategySection):
    restore_hysteresis_kw: Kw = 2.0  # room beyond the load's power before it comes back
    restore_delay_s: Seconds = 10.0  # that room held this long
