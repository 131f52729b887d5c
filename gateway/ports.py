"""Typed meeting points of the daemon's parts, instead of finding each other by name.

The daemon holds one ``Ports``. Services it runs itself are set before any component
starts (``alarms``, like the historian); a component that offers something to others sets
its port in its constructor (``controller``, ``forecasts``) and the others read the port
when they use it, so the order of the component factories carries no meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.alarms import AlarmStore


class ControllerPort(Protocol):
    """What the scheduler and the demo use of the site controller."""

    plan: Any  # the plan the controller tracks (gateway.control.plan.Plan | None)
    sessions: Any  # its EV session book


class ForecastPort(Protocol):
    """What the scheduler uses of analytics: the trained forecaster, if any yet."""

    forecaster: Any  # gateway.analytics.forecast.Forecaster | None


@dataclass
class Ports:
    """The daemon's typed ports (see the module docstring)."""

    alarms: AlarmStore | None = None  # alarms + audit (on when `control:` is set)
    controller: ControllerPort | None = None  # the site controller, when one runs here
    forecasts: ForecastPort | None = None  # analytics, when on
