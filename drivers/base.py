"""The interface every protocol driver implements.

The poller only sees this: it asks a DeviceIO for a read of all its points and gets
engineering values keyed by standard point names, or a DriverError. Drivers own
protocol I/O, connections and reconnects; the poller owns timing; control sees natures.
A driver may also offer ``DeviceIO.read_round``: the reads of several devices of one
link in one go (the poller's round of an endpoint), cheaper than one read at a time.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from drivers.connection import ConnectionBase
from drivers.template_base import DeviceSpec, TemplateBase
from gateway.model import Invalid, PointValue

log = logging.getLogger("autogrid.drivers")


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
    """One device behind a driver: read all points, write one point.

    ``read_round``, when not None, reads several devices that share it (the same object)
    in one go, in order: for each device it read, (latency ms, its values or the
    DriverError its read ended with, wall time the read ended). It may read fewer than
    asked (a prefix); the caller reads the rest with ``read``. Each device's read means
    what its own ``read`` would: the same values, errors and statistics."""

    device_id: str
    endpoint: str  # the physical link it shares with others, e.g. "tcp://127.0.0.1:5020"
    stats: IOStats
    read_round: RoundReader | None = None

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


Values = Mapping[str, PointValue | Invalid | None]
# one device's read in a round: latency ms, its values or its error, wall time it ended
RoundResult = tuple[float, "Values | DriverError", float]
RoundReader = Callable[[Sequence[DeviceIO]], Awaitable[list[RoundResult]]]

P = TypeVar("P")
L = TypeVar("L")


class LinkedDeviceIO(DeviceIO):
    """What every protocol's device shares: writes counted in its stats (an error and
    its text, cleared by the next success), refused once the device is detached, and
    one rule for naming a point that cannot be written. A subclass implements
    ``_write`` (the protocol's write and read-back) and sets ``_attached``."""

    _attached: bool = True

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        self.stats.writes += 1
        try:
            if not self._attached:
                raise DeviceOffline(f"{self.device_id}: detached from {self.endpoint}")
            got = await self._write(point, value)
        except DriverError as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            raise
        except Exception as exc:  # a library error the driver did not map: still a refusal
            log.exception("%s: writing '%s' failed in the driver", self.device_id, point)
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            raise WriteError(f"{self.device_id}: writing '{point}' failed in the driver: "
                             f"{type(exc).__name__}: {exc}") from exc
        self.stats.last_error = None
        return got

    @abstractmethod
    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        """Write one point and read it back (see DeviceIO.write)."""

    @staticmethod
    def chosen_points(device_id: str, template_points: Mapping[str, object],
                      points: Sequence[str] | None) -> list[str]:
        """The points a device polls: ``points`` as configured (all of the template's when
        None), or UnknownPoint naming those the template does not have."""
        names = list(template_points) if points is None else list(points)
        unknown = [n for n in names if n not in template_points]
        if unknown:
            raise UnknownPoint(f"{device_id}: points {unknown} are not in the template "
                               f"(known: {', '.join(template_points)})")
        return names

    def writable_point(self, points: Mapping[str, P], writable: Sequence[str],
                       point: str) -> P:
        """The template entry of ``point``, or UnknownPoint saying it is not in the
        template or is read-only, with the points that can be written."""
        pt = points.get(point)
        names = ", ".join(writable) or "none"
        if pt is None:
            raise UnknownPoint(f"{self.device_id}: '{point}' is not in the template "
                               f"(writable: {names})")
        if point not in writable:
            raise UnknownPoint(f"{self.device_id}: '{point}' is read-only (writable: {names})")
        return pt


class LinkPool(Generic[L]):
    """Links shared by every device behind one physical endpoint, reference counted:
    made on the first attach, handed back for closing when the last device detaches."""

    def __init__(self) -> None:
        self._links: dict[str, L] = {}
        self._refs: dict[str, int] = {}

    def attach(self, key: str, make: Callable[[], L]) -> L:
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = make()
        self._refs[key] = self._refs.get(key, 0) + 1
        return link

    def detach(self, key: str) -> L | None:
        """One device fewer on ``key``; the link when that was the last one (close it)."""
        if key not in self._links:
            return None
        self._refs[key] -= 1
        if self._refs[key] > 0:
            return None
        del self._refs[key]
        return self._links.pop(key)

    def refs(self, key: str) -> int:
        return self._refs.get(key, 0)

    @property
    def links(self) -> dict[str, L]:
        return dict(self._links)

    def take_all(self) -> list[L]:
        """Every link, forgotten (the driver closes them)."""
        links = list(self._links.values())
        self._links.clear()
        self._refs.clear()
        return links


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
