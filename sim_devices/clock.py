"""Injectable simulation clocks.

The physics runs on simulated time, which may run faster than the wall clock (a day of
site behaviour in seconds). Communication (watchdogs, polling) stays on wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


def to_epoch(start: datetime | float | int | None) -> float:
    """Epoch seconds of a UTC (or any aware) datetime or a number; None means now.

    A naive datetime is taken as UTC: the simulator has no local time of its own.
    """
    if start is None:
        return time.time()
    if isinstance(start, datetime):
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        return start.timestamp()
    return float(start)


class Clock(Protocol):
    """What the physics needs from a clock: simulated epoch seconds, and its speed."""

    @property
    def speed(self) -> float: ...

    def now(self) -> float: ...

    def datetime(self) -> datetime: ...


class SimClock:
    """Simulated time = start + (wall elapsed) x speed; speed is sim seconds per wall second."""

    def __init__(self, start: datetime | float | None = None, speed: float = 1.0,
                 wall: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, found {speed!r}")
        self._wall = wall
        self._anchor_sim = to_epoch(start)
        self._anchor_wall = wall()
        self._speed = float(speed)

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change speed without a jump in simulated time."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0, found {speed!r}")
        self._anchor_sim = self.now()
        self._anchor_wall = self._wall()
        self._speed = float(speed)

    def now(self) -> float:
        return self._anchor_sim + (self._wall() - self._anchor_wall) * self._speed

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=UTC)


class ManualClock:
    """A clock that only moves when told to; for tests and batch runs."""

    def __init__(self, start: datetime | float | None = None) -> None:
        self._now = to_epoch(start)

    @property
    def speed(self) -> float:
        return 1.0

    def now(self) -> float:
        return self._now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self._now, tz=UTC)

    def advance(self, dt_s: float) -> float:
        """Move forward by ``dt_s`` simulated seconds; returns the new time."""
        if dt_s < 0:
            raise ValueError(f"a clock cannot go backwards (dt_s={dt_s})")
        self._now += dt_s
        return self._now

    def set(self, now_s: float) -> None:
        if now_s < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = float(now_s)
