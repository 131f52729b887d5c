"""The interface every protocol driver implements.

The poller only sees this: it asks a DeviceIO for a read of all its points and gets
engineering values keyed by standard point names, or a DriverError. Drivers own
protocol I/O, connections and reconnects; the poller owns timing; control sees natures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.model import Invalid, PointValue


class DriverError(Exception):
    """A device could not be read or written. The message is for an operator's log."""


class DeviceOffline(DriverError):
    """No connection to the device (refused, dropped, or reconnect backoff pending)."""


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class ProtocolError(DriverError):
    """The device answered with an exception, a short or a malformed response."""


class WriteError(DriverError):
    """A write was refused, or the read-back did not show the written value."""


class UnknownPoint(DriverError):
    """The point is not in the device's template (or is not writable)."""


@dataclass
class IOStats:
    """Communication counters of one device, shown in diagnostics."""

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    reconnects: int = 0
    writes: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def counters(self, max_table: int = 16) -> dict[str, float]:
        """The numeric protocol event counters in ``extra`` (DNP3 restarts, CAN frames,
        ...), a small table of them flattened to ``name.key``; big tables (per-id drops)
        stay in ``extra`` so a stats reply or /metrics cannot swell."""
        out: dict[str, float] = {}
        for name, v in self.extra.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[name] = float(v)
            elif isinstance(v, dict) and len(v) <= max_table:
                for key, x in v.items():
                    if isinstance(x, int | float) and not isinstance(x, bool):
                        out[f"{name}.{key}"] = float(x)
        return out


class DeviceIO(ABC):
    """One device behind a driver: read all points, write one point."""

    device_id: str
    endpoint: str  # the physical link it shares with others, e.g. "tcp://127.0.0.1:5020"
    stats: IOStats

    @abstractmethod
    async def read(self) -> Mapping[str, PointValue | Invalid | None]:
        """Read every polled point; None for a point the device reports as not implemented,
        an ``Invalid`` for one whose value cannot be true (out of range, error pattern).

        Raises DriverError (a subclass) when the device cannot be read.
        """

    @abstractmethod
    async def write(self, point: str, value: PointValue) -> PointValue | None:
        """Write one point, read it back and return the read-back value.

        Raises WriteError when the device refuses or the read-back differs.
        """


class Driver(ABC):
    """A protocol driver. One instance per daemon; devices attach to it."""

    name: ClassVar[str]
    connection_types: ClassVar[tuple[str, ...]]  # config `connections[].type` it serves

    @abstractmethod
    def attach(self, device: Any, template: Any, connection: Any) -> DeviceIO:
        """Bind a configured device (gateway.config.models.Device) with its template and
        connection config; no I/O happens until the first read."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection and cancel background tasks (reconnects)."""
