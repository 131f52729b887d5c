"""What every simulated device model offers the protocol servers, and shared helpers.

A model owns its physics (``step``), shows all of its nature's standard points
(``read_points``), accepts writes like real hardware (clamped, or refused with a reason)
and reverts to safe defaults when the gateway goes silent (communication watchdog on
wall time, because communication stays real-time when the physics clock is accelerated).
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from gateway.model import NATURES, Kind, Nature, PointValue


@dataclass
class AcBus:
    """The AC network the site's devices see; the site updates it every step."""

    nominal_v: float = 230.0
    nominal_f_hz: float = 50.0
    v_v: float = 230.0
    f_hz: float = 50.0
    energized: bool = True


def model_rng(seed: int, device_id: str) -> np.random.Generator:
    """A generator per device, stable when other devices are added or removed."""
    return np.random.default_rng([seed, zlib.crc32(device_id.encode())])


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class SimModel(ABC):
    """One simulated device."""

    nature: Nature

    def __init__(self, device_id: str, bus: AcBus, watchdog_s: float | None = None) -> None:
        self.device_id = device_id
        self.bus = bus
        self.watchdog_s: float | None = watchdog_s if watchdog_s else None
        self.watchdog_expired = False  # true from expiry until the next write
        self._last_comm_wall: float | None = None

    # --- physics -----------------------------------------------------------------------
    @abstractmethod
    def step(self, now_s: float, dt_s: float) -> None:
        """Advance the physics by ``dt_s`` simulated seconds, ending at ``now_s``."""

    @abstractmethod
    def read_points(self) -> dict[str, PointValue]:
        """Current values of every standard point of the nature."""

    def consumption_kw(self) -> float:
        """Power drawn from the site's AC bus (+) or fed into it (-); for the balance."""
        return 0.0

    # --- writes ------------------------------------------------------------------------
    def write_point(self, point: str, value: PointValue) -> PointValue:
        """Operator/gateway write: checks, clamps, applies; returns the accepted value."""
        spec = NATURES[self.nature].get(point)
        if spec is None:
            raise ValueError(f"{self.nature} has no point '{point}'")
        if not spec.writable:
            raise ValueError(f"{self.nature} point '{point}' is read-only")
        if spec.kind is Kind.BOOL:
            typed: PointValue = _as_bool(point, value)
        elif spec.kind is Kind.FLOAT:
            typed = _as_float(point, value)
        elif spec.kind is Kind.INT:
            typed = int(_as_float(point, value))
        else:
            typed = str(value)
        if point == "watchdog_s":
            return self._write_watchdog(float(typed))
        return self._apply(point, typed)

    @abstractmethod
    def _apply(self, point: str, value: PointValue) -> PointValue:
        """Apply a type-checked write to a writable point; return the accepted value."""

    def _write_watchdog(self, seconds: float) -> PointValue:
        if seconds < 0:
            raise ValueError(f"watchdog_s must be >= 0 (0 = off), found {seconds}")
        seconds = min(seconds, 3600.0)
        self.watchdog_s = seconds or None
        return seconds

    @abstractmethod
    def safe_defaults(self) -> None:
        """Revert setpoints to what the device does on its own (no gateway)."""

    # --- communication watchdog (wall time) --------------------------------------------
    def note_comm_write(self, wall_s: float) -> None:
        """A setpoint write arrived at wall time ``wall_s``; re-arms the watchdog."""
        self._last_comm_wall = wall_s
        self.watchdog_expired = False

    def check_watchdog(self, wall_s: float) -> bool:
        """Apply safe defaults once when the watchdog expires; True when it did now."""
        if (self.watchdog_s is None or self._last_comm_wall is None or self.watchdog_expired
                or wall_s - self._last_comm_wall < self.watchdog_s):
            return False
        self.watchdog_expired = True
        self.safe_defaults()
        return True

    def ac(self) -> tuple[float, float]:
        """Voltage and frequency at the device terminals (0, 0 when de-energized)."""
        return (self.bus.v_v, self.bus.f_hz) if self.bus.energized else (0.0, 0.0)


def _as_float(point: str, value: PointValue) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{point}' needs a number, found {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"'{point}' needs a finite number, found {value!r}")
    return x


def _as_bool(point: str, value: PointValue) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"'{point}' needs true/false (or 0/1), found {value!r}")
