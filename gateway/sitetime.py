"""The site's clock and time zone, for everything that shows a time (console, status).

API command ``site_time`` -> {now, wall, timezone, zone_abbrev, simulated, speed}. ``now`` is
the clock control runs on: the wall clock, or in a simulation the simulated site clock
(which may run faster); ``wall`` is the daemon's wall clock at the same instant, so a
client can place wall-clock events (alarms, audit) on the site clock too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str | None) -> tzinfo:
    """The named zone, or UTC for a name this machine does not know."""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


@dataclass
class SiteClock:
    """The site's time as a client sees it, anchored on the daemon's last answer."""

    timezone: str = ""
    simulated: bool = False
    speed: float = 1.0
    anchor_site: float | None = None
    anchor_wall: float | None = None
    tz: tzinfo = field(default_factory=lambda: datetime.now().astimezone().tzinfo or UTC)

    @classmethod
    def from_answer(cls, ans: dict[str, Any], received_wall: float | None = None
                    ) -> SiteClock:
        """From a ``site_time`` answer; anchored at the local wall time it arrived."""
        wall = time.time() if received_wall is None else received_wall
        speed = ans.get("speed")
        now = ans.get("now")
        return cls(timezone=str(ans.get("timezone") or "UTC"),
                   simulated=bool(ans.get("simulated")),
                   speed=float(speed) if isinstance(speed, int | float) else 1.0,
                   anchor_site=float(now) if isinstance(now, int | float) else None,
                   anchor_wall=wall, tz=zone(str(ans.get("timezone") or "UTC")))

    def now(self, wall: float | None = None) -> float:
        """The site clock now (epoch seconds)."""
        return self.from_wall(time.time() if wall is None else wall)

    def from_wall(self, ts: float) -> float:
        """A wall-clock instant on the site clock (the same instant unless simulated)."""
        if not self.simulated or self.anchor_site is None or self.anchor_wall is None:
            return ts
        return self.anchor_site + (ts - self.anchor_wall) * self.speed

    def label(self, ts: float) -> str:
        """``HH:MM:SS ZONE`` on this clock's zone."""
        when = datetime.fromtimestamp(ts, tz=self.tz)
        return f"{when:%H:%M:%S} {when.tzname() or ''}".rstrip()

    def describe(self, wall: float | None = None) -> str:
        """The site time in words: date, time, zone, and whether it is simulated."""
        when = datetime.fromtimestamp(self.now(wall), tz=self.tz)
        text = f"{when:%Y-%m-%d %H:%M:%S} {when.tzname() or ''} ({self.timezone or 'local'})"
        return text + (f", simulated at {self.speed:g}x real time" if self.simulated else "")


class SiteTimeSource:
    """What the daemon knows of the site clock; a simulation (the demo) replaces ``clock``."""

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        self.clock: Callable[[], float] = time.time
        self.simulated = False
        self.speed = 1.0

    def use_simulation(self, clock: Callable[[], float], speed: float) -> None:
        self.clock, self.simulated, self.speed = clock, True, speed

    def answer(self) -> dict[str, Any]:
        now = self.clock()
        abbrev = datetime.fromtimestamp(now, tz=zone(self.timezone)).tzname()
        return {"now": now, "wall": time.time(), "timezone": self.timezone,
                "zone_abbrev": abbrev, "simulated": self.simulated, "speed": self.speed}
