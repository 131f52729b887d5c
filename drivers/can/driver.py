"""The CAN driver: devices on python-can buses, one shared link per connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import can

from drivers.base import Driver, DriverError, LinkPool
from drivers.can.connection import CanConnection
from drivers.can.device import CanDeviceIO
from drivers.can.link import CanLink, link_key, open_bus
from drivers.can.template import CanTemplate
from drivers.connection import ConnectionBase
from drivers.template_base import DeviceSpec, TemplateBase


class CanDriver(Driver[CanConnection, CanTemplate]):
    """Attach devices to CAN buses. Each connection (interface + channel) is one link,
    opened on the first read and closed when its last device detaches."""

    name: ClassVar[str] = "can"
    protocol: ClassVar[str] = "can"
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]] = (CanConnection,)
    template_model: ClassVar[type[TemplateBase]] = CanTemplate

    def __init__(self, *, bus_factory: Callable[[CanConnection], can.BusABC] = open_bus
                 ) -> None:
        self._bus_factory = bus_factory
        self._pool: LinkPool[CanLink] = LinkPool()
        self._devices: dict[int, CanDeviceIO] = {}

    def attach(self, device: DeviceSpec, template: CanTemplate, connection: CanConnection
               ) -> CanDeviceIO:
        """Bind ``device`` to ``template`` on ``connection``; no I/O yet."""
        if not isinstance(template, CanTemplate):
            raise DriverError(f"{device.id}: template '{device.template}' is not a CAN "
                              f"template")
        if not isinstance(connection, CanConnection):
            raise DriverError(f"{device.id}: the can driver cannot use connection "
                              f"'{getattr(connection, 'id', connection)}' of type "
                              f"'{getattr(connection, 'type', type(connection).__name__)}' "
                              f"(it serves {', '.join(self.connection_types())})")
        key = link_key(connection)
        link = self._pool.attach(key, lambda: CanLink(connection, self._bus_factory))
        io = CanDeviceIO(device.id, device.unit_id, template, link, device.points,
                         self._detach)
        self._devices[id(io)] = io
        return io

    @property
    def links(self) -> dict[str, CanLink]:
        return self._pool.links

    def _detach(self, io: CanDeviceIO) -> bool:
        """Forget ``io``; True when it was the last device on its link (close it)."""
        if self._devices.pop(id(io), None) is None:
            return False
        return self._pool.detach(io.endpoint) is not None

    async def close(self) -> None:
        links = self._pool.take_all()
        self._devices.clear()
        for link in links:
            await link.close()
