"""A skeleton driver to copy when adding a protocol (like evcc's charger/_blueprint.go).

How to add a protocol, say "acme":

1. Copy this file to your own package (``autogrid_acme/driver.py``) or to
   ``drivers/acme/`` and rename the classes. Keep protocol code per protocol, never per
   device model: device models are templates (data), and the driver maps a template's
   points to protocol addresses.
2. Declare what a site config may say, as pydantic models (unknown keys are errors):
   - a connection model, a ``drivers.connection.ConnectionBase`` with
     ``type: Literal["acme_tcp"]`` and its fields (host, port, timeouts); override
     ``check()`` for cross-field problems and ``endpoint()`` so two connections cannot
     name one endpoint (``host_problems`` and ``network_endpoint`` help);
   - a template model, a ``drivers.template.TemplateBase`` with
     ``protocol: Literal["acme"]`` and its point model; check points against the nature
     with ``nature_problems`` (one rule for every protocol) and say which are writable.
   The site config's ``connections[]`` union, ``autogrid check`` and the template loader
   are built from these declarations: no table elsewhere changes.
3. Implement the two small interfaces from ``drivers/base.py``:
   - ``Driver[YourConnection, YourTemplate]``: one instance per daemon. ``attach()``
     binds a configured device (a ``DeviceSpec``: id, unit_id, points, ...) to its
     template and connection and does no I/O; ``close()`` closes every link and cancels
     every task it started.
   - ``DeviceIO``: ``read()`` returns every polled point by its standard name
     (``gateway.model.NATURES``), in the point's unit, None where the device says "not
     implemented", ``Invalid(raw, why)`` where a value cannot be true; ``write()``
     writes one point, reads it back and returns what it read.
4. Map every failure to a ``DriverError`` subclass, never let a library exception out:
   ``DeviceOffline`` (no link; also while backing off before a reconnect; fail fast, do
   not sleep in read()), ``DeviceTimeout``, ``ProtocolError`` (an error answer, a short
   or malformed frame), ``WriteError`` (refused, or the read-back differs),
   ``UnknownPoint``. The poller turns them into quality and logs changes of state.
5. Share one link and one lock per physical endpoint (host:port, serial port, CAN
   interface) among all devices behind it, reference counted (``LinkPool``): open on
   first use, close when the last device detaches. Derive the device from
   ``LinkedDeviceIO``: it counts writes and errors, refuses a write once detached, maps
   an exception your code let slip to a WriteError, and names unwritable points alike.
   Reconnect with a capped, doubling delay reset on success (see
   ``drivers/modbus/endpoint.py``).
6. Keep the per-read cost small: plan the requests and build the decoders in attach().
7. Register it. A separate package declares an entry point; the registry reads the
   ``DriverInfo`` without importing your protocol library, and imports the driver class
   only when a site has a device on one of your connections::

       [project.entry-points."autogrid.drivers"]
       acme = "autogrid_acme:DRIVER"      # DRIVER = DriverInfo(name="acme", ...)

   (Naming the Driver class itself also works: its class variables ``name``,
   ``protocol``, ``connection_models`` and ``template_model`` are the declaration.)
   Built-in drivers are listed in ``drivers/registry.py`` (``BUILTIN``). A driver name,
   protocol or connection type that another driver already has is refused at start.
8. Test it against a simulated device that speaks the real protocol on 127.0.0.1
   (see ``tests/test_modbus_driver*.py``): reads, writes with read-back, timeouts,
   error answers, link loss and recovery. ``tests/plugin_pkg`` is a whole plug-in
   package, installed by the tests and polled from a site.yaml.

This skeleton runs as is: its "device" is an in-memory register map, so the shape can
be tried without hardware (``tests/test_registry.py`` loads it through an entry point).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import model_validator

from drivers.base import (
    DeviceOffline,
    Driver,
    DriverError,
    IOStats,
    LinkedDeviceIO,
    LinkPool,
    WriteError,
)
from drivers.connection import ConnectionBase
from drivers.template_base import (
    DeviceSpec,
    StrictTemplatePart,
    TemplateBase,
    nature_problems,
)
from gateway.model import PointValue


class BlueprintMemory(ConnectionBase):
    """``connections[]`` entry ``type: blueprint_memory``: a named in-memory bus."""

    type: Literal["blueprint_memory"]


class BlueprintPoint(StrictTemplatePart):
    """Where a point lives on the device; a real protocol has an address here."""

    access: Literal["r", "rw"] = "r"


class BlueprintTemplate(TemplateBase):
    """A device model of this protocol (``protocol: blueprint`` in a template file)."""

    protocol: Literal["blueprint"] = "blueprint"
    points: dict[str, BlueprintPoint]

    @model_validator(mode="after")
    def _points_of_nature(self) -> BlueprintTemplate:
        problems = nature_problems(self.nature, {
            n: "access is 'rw'" if p.access == "rw" else None for n, p in self.points.items()})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def writable(self) -> list[str]:
        return [n for n, p in self.points.items() if p.access == "rw"]


class _Link:
    """One physical endpoint shared by every device behind it (here: a dict)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = asyncio.Lock()  # one request at a time on the wire
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


class BlueprintDeviceIO(LinkedDeviceIO):
    """One device: reads its polled points, writes one point with read-back. The base
    class counts writes and errors, refuses writes once detached and names a point that
    cannot be written; this class only speaks the protocol."""

    def __init__(self, device: DeviceSpec, template: BlueprintTemplate, link: _Link,
                 on_close: Callable[[BlueprintDeviceIO], None]) -> None:
        self.device_id = device.id
        self.endpoint = link.key
        self.stats = IOStats()
        self._unit = device.unit_id
        self._points = list(device.points or template.points)  # decided once, not per read
        self._template = template
        self._link = link
        self._on_close: Callable[[BlueprintDeviceIO], None] | None = on_close

    async def read(self) -> dict[str, PointValue | None]:
        out: dict[str, PointValue | None] = {}
        for name in self._points:
            self.stats.requests += 1
            out[name] = await self._link.request(self._unit, name)
        return out

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        self.writable_point(self._template.points, self._template.writable, point)
        await self._link.request(self._unit, point, value)
        back = await self._link.request(self._unit, point)  # always verify by read-back
        if back != value:
            raise WriteError(f"{self.device_id}: wrote '{point}' = {value!r} but read back "
                             f"{back!r}")
        return back

    async def close(self) -> None:
        """Detach from the link (it closes with the last device on it)."""
        self._attached = False
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


class BlueprintDriver(Driver[BlueprintMemory, BlueprintTemplate]):
    """The driver: owns the links, hands out DeviceIOs. Its class variables are its
    declaration to the registry."""

    name: ClassVar[str] = "blueprint"
    protocol: ClassVar[str] = "blueprint"
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]] = (BlueprintMemory,)
    template_model: ClassVar[type[TemplateBase]] = BlueprintTemplate

    def __init__(self) -> None:  # the registry creates drivers without arguments
        self._pool: LinkPool[_Link] = LinkPool()  # one link per endpoint, counted

    def attach(self, device: DeviceSpec, template: BlueprintTemplate,
               connection: BlueprintMemory) -> BlueprintDeviceIO:
        # The daemon hands over whatever the config says: refuse another protocol's
        # template or connection with a message naming it. Precompute the read plan
        # here; no I/O happens until the first read.
        if not isinstance(template, BlueprintTemplate):
            raise DriverError(f"{device.id}: template '{device.template}' is not a "
                              f"blueprint template")
        if not isinstance(connection, BlueprintMemory):
            raise DriverError(f"{device.id}: the blueprint driver cannot use connection "
                              f"'{connection.id}' of type '{connection.type}'")
        key = f"memory://{connection.id}"
        link = self._pool.attach(key, lambda: _Link(key))
        return BlueprintDeviceIO(device, template, link, self._detach)

    def _detach(self, io: BlueprintDeviceIO) -> None:
        last = self._pool.detach(io.endpoint)
        if last is not None:
            last.close()

    async def close(self) -> None:
        for link in self._pool.take_all():
            link.close()
