"""One module per screen; ``SCREENS`` lists them in footer order (key 1..9 / F1..F9),
``EXTRA_SCREENS`` those reached by a letter."""

from __future__ import annotations

from gateway.console.screens.alarms import AlarmsScreen
from gateway.console.screens.analytics import AnalyticsScreen
from gateway.console.screens.base import Ctx, Screen
from gateway.console.screens.cluster import ClusterScreen
from gateway.console.screens.devices import DevicesScreen
from gateway.console.screens.diagnostics import DiagnosticsScreen
from gateway.console.screens.emergency import EmergencyScreen
from gateway.console.screens.ev import EvScreen
from gateway.console.screens.grid import GridScreen
from gateway.console.screens.overview import OverviewScreen
from gateway.console.screens.trading import TradingScreen

SCREENS: list[type[Screen]] = [
    OverviewScreen, DevicesScreen, GridScreen, EvScreen, TradingScreen, AnalyticsScreen,
    AlarmsScreen, DiagnosticsScreen, EmergencyScreen,
]

# Screens without a number (the nine tabs are full), each on its own key.
EXTRA_SCREENS: dict[str, type[Screen]] = {"c": ClusterScreen}

__all__ = ["EXTRA_SCREENS", "SCREENS", "Ctx", "Screen"]
