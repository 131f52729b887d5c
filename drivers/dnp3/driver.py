"""The DNP3 driver: dnp3_tcp connections, one shared link per outstation association."""

from __future__ import annotations

from typing import ClassVar

from drivers.base import Driver, DriverError, LinkPool
from drivers.connection import ConnectionBase
from drivers.dnp3.connection import Dnp3Tcp
from drivers.dnp3.device import Dnp3DeviceIO
from drivers.dnp3.link import Dnp3Link, link_key
from drivers.dnp3.template import Dnp3Template
from drivers.template_base import DeviceSpec, TemplateBase


class Dnp3Driver(Driver[Dnp3Tcp, Dnp3Template]):
    """Attach devices; every device on one association (host, port, master and outstation
    address) shares one link, one lock and one set of polls; the link closes when the
    last device detaches."""

    name: ClassVar[str] = "dnp3"
    protocol: ClassVar[str] = "dnp3"
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]] = (Dnp3Tcp,)
    template_model: ClassVar[type[TemplateBase]] = Dnp3Template

    def __init__(self) -> None:
        self._pool: LinkPool[Dnp3Link] = LinkPool()
        self._devices: dict[int, Dnp3DeviceIO] = {}
        self._closing: list[Dnp3Link] = []

    def attach(self, device: DeviceSpec, template: Dnp3Template, connection: Dnp3Tcp
               ) -> Dnp3DeviceIO:
        """Bind ``device`` to ``template`` over ``connection``; no I/O yet."""
        if not isinstance(template, Dnp3Template):
            raise DriverError(f"{device.id}: template is not a DNP3 template")
        if not isinstance(connection, Dnp3Tcp):
            raise DriverError(f"{device.id}: the dnp3 driver cannot use connection "
                              f"'{getattr(connection, 'id', connection)}' of type "
                              f"'{getattr(connection, 'type', type(connection).__name__)}' "
                              f"(it serves {', '.join(self.connection_types())})")
        link = self._pool.attach(link_key(connection), lambda: Dnp3Link(connection))
        io = Dnp3DeviceIO(device.id, template, link, device.points, self._detach)
        self._devices[id(io)] = io
        return io

    @property
    def links(self) -> dict[str, Dnp3Link]:
        return self._pool.links

    def _detach(self, io: Dnp3DeviceIO) -> None:
        if self._devices.pop(id(io), None) is None:
            return
        last = self._pool.detach(io.endpoint)
        if last is not None:
            self._closing.append(last)

    async def close(self) -> None:
        links = self._pool.take_all() + self._closing
        self._closing.clear()
        self._devices.clear()
        for link in links:
            await link.close()
