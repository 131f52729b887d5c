"""The interface every protocol driver implements.

The poller only sees this: it asks a DeviceIO for a read of all its points and gets
engineering values keyed by standard point names, or a DriverError. Drivers own
protocol I/O, connections and reconnects; the poller owns timing; control sees natures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from drivers.connection import ConnectionBase
from drivers.template_base import DeviceSpec, TemplateBase
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


ConnT = TypeVar("ConnT", bound=ConnectionBase)
TplT = TypeVar("TplT", bound=TemplateBase)


class Driver(ABC, Generic[ConnT, TplT]):
    """A protocol driver. One instance per daemon; devices attach to it.

    A driver declares what it serves: ``protocol`` (the ``protocol:`` of its templates),
    ``connection_models`` (the ``connections[]`` models, each with its ``type``) and
    ``template_model``. The registry builds the site config's connection union and the
    template loader from these, so a plug-in needs no table changed anywhere else.
    """

    name: ClassVar[str]
    protocol: ClassVar[str]
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]]
    template_model: ClassVar[type[TemplateBase]]

    @classmethod
    def connection_types(cls) -> tuple[str, ...]:
        """The config ``connections[].type`` values this driver serves."""
        return tuple(m.type_name() for m in cls.connection_models)

    @abstractmethod
    def attach(self, device: DeviceSpec, template: TplT, connection: ConnT) -> DeviceIO:
        """Bind a configured device with its template and connection config; no I/O
        happens until the first read. A template or connection of another protocol is
        refused with a DriverError that names it."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection and cancel background tasks (reconnects)."""


@dataclass(frozen=True)
class DriverInfo:
    """A driver's declaration, readable without importing the driver (its protocol
    library): what the registry needs to build the config schema and load templates.

    A built-in package or a plug-in names one of these in the registry (or names its
    Driver class, whose class variables say the same, at the price of importing it).
    """

    name: str
    protocol: str
    connection_models: tuple[type[ConnectionBase], ...]
    template_model: str | type[TemplateBase]  # "module:Class", imported on first use
    driver: str | type[Driver[Any, Any]]  # "module:Class", imported on first attach

    @property
    def connection_types(self) -> tuple[str, ...]:
        return tuple(m.type_name() for m in self.connection_models)

    @classmethod
    def of(cls, driver: type[Driver[Any, Any]]) -> DriverInfo:
        """The declaration a Driver subclass makes with its class variables."""
        missing = [v for v in ("name", "protocol", "connection_models", "template_model")
                   if not hasattr(driver, v)]
        if missing:
            raise TypeError(f"{driver.__module__}.{driver.__qualname__} does not declare "
                            f"{', '.join(missing)}")
        return cls(driver.name, driver.protocol, tuple(driver.connection_models),
                   driver.template_model, driver)
