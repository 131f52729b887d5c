"""A skeleton driver to copy when adding a protocol (like evcc's charger/_blueprint.go).

How to add a protocol, say "acme":

1. Copy this file to ``drivers/acme/driver.py`` (or your own package) and rename the
   classes. Keep protocol code per protocol, never per device model: device models are
   templates (data), and the driver maps a template's points to protocol addresses.
2. Implement the two small interfaces from ``drivers/base.py``:
   - ``Driver``: one instance per daemon. ``attach()`` binds a configured device
     (``gateway.config.models.Device``) to its template and connection config and does
     no I/O; ``close()`` closes every link and cancels every task it started.
   - ``DeviceIO``: ``read()`` returns every polled point by its standard name
     (``gateway.model.NATURES``), in the point's unit, None where the device says "not
     implemented"; ``write()`` writes one point, reads it back and returns what it read.
3. Map every failure to a ``DriverError`` subclass, never let a library exception out:
   ``DeviceOffline`` (no link; also while backing off before a reconnect; fail fast, do
   not sleep in read()), ``DeviceTimeout``, ``ProtocolError`` (an error answer, a short
   or malformed frame), ``WriteError`` (refused, or the read-back differs),
   ``UnknownPoint``. The poller turns them into quality and logs changes of state.
4. Share one link and one lock per physical endpoint (host:port, serial port, CAN
   interface) among all devices behind it, reference counted: open on first use, close
   when the last device detaches. Reconnect with a capped, doubling delay reset on
   success (see ``drivers/modbus/endpoint.py``).
5. Keep the per-read cost small: plan the requests and build the decoders in attach().
6. Register it. Built-in drivers go in ``drivers/registry.py`` (``BUILTIN``); a separate
   package declares an entry point, imported only when a site uses it::

       [project.entry-points."autogrid.drivers"]
       acme = "autogrid_acme.driver:AcmeDriver"

   ``connection_types`` lists the config ``connections[].type`` values it serves;
   ``drivers.registry.driver_for_connection_type()`` picks the driver from it. A name or
   a connection type that another driver already has is refused at start.
7. Test it against a simulated device that speaks the real protocol on 127.0.0.1
   (see ``tests/test_modbus_driver*.py``): reads, writes with read-back, timeouts,
   error answers, link loss and recovery.

This skeleton runs as is: its "device" is an in-memory register map, so the shape can
be tried without hardware (``tests/test_registry.py`` loads it through an entry point).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from drivers.base import (
    DeviceIO,
    DeviceOffline,
    Driver,
    IOStats,
    UnknownPoint,
    WriteError,
)
from gateway.model import PointValue


class _Link:
    """One physical endpoint shared by every device behind it (here: a dict)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = asyncio.Lock()  # one request at a time on the wire
        self.refs = 0
        self.memory: dict[tuple[int, str], PointValue] = {}  # stands in for the device
        self.up = True

    async def request(self, unit: int, point: str, value: PointValue | None = None
                      ) -> PointValue | None:
        async with self.lock:
            if not self.up:
                raise DeviceOffline(f"{self.key}: link down")
            # A real driver sends a frame here, waits for the answer with a timeout
            # (DeviceTimeout), checks it (ProtocolError) and decodes it.
            if value is not None:
                self.memory[(unit, point)] = value
            return self.memory.get((unit, point))

    def close(self) -> None:
        self.up = False


class BlueprintDeviceIO(DeviceIO):
    """One device: reads its polled points, writes one point with read-back."""

    def __init__(self, device_id: str, unit: int, points: list[str], link: _Link,
                 writable: set[str]) -> None:
        self.device_id = device_id
        self.endpoint = link.key
        self.stats = IOStats()
        self._unit = unit
        self._points = points  # decided once in attach, not per read
        self._writable = writable
        self._link = link

    async def read(self) -> dict[str, PointValue | None]:
        out: dict[str, PointValue | None] = {}
        for name in self._points:
            self.stats.requests += 1
            out[name] = await self._link.request(self._unit, name)
        return out

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        if point not in self._writable:
            raise UnknownPoint(f"{self.device_id}: '{point}' is not writable "
                               f"(writable: {', '.join(sorted(self._writable)) or 'none'})")
        self.stats.writes += 1
        await self._link.request(self._unit, point, value)
        back = await self._link.request(self._unit, point)  # always verify by read-back
        if back != value:
            raise WriteError(f"{self.device_id}: wrote '{point}' = {value!r} but read back "
                             f"{back!r}")
        return back


class BlueprintDriver(Driver):
    """The driver: owns the links, hands out DeviceIOs."""

    name: ClassVar[str] = "blueprint"
    connection_types: ClassVar[tuple[str, ...]] = ("blueprint_memory",)

    def __init__(self) -> None:  # the registry creates drivers without arguments
        self._links: dict[str, _Link] = {}

    def attach(self, device: Any, template: Any, connection: Any) -> BlueprintDeviceIO:
        # A real driver validates the template type and connection type here and
        # precomputes its read plan; no I/O happens until the first read.
        key = f"memory://{connection.id}"
        link = self._links.setdefault(key, _Link(key))
        link.refs += 1
        points = list(device.points or template.points)
        writable = {n for n, p in template.points.items() if p.access != "r"}
        return BlueprintDeviceIO(device.id, device.unit_id, points, link, writable)

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
