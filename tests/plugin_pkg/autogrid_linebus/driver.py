"""The linebus driver: one TCP link per endpoint shared by its devices, reference counted."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

from autogrid_linebus.connection import LineBusTcp
from autogrid_linebus.template import LineBusTemplate
from drivers.base import (
    DeviceOffline,
    DeviceTimeout,
    Driver,
    DriverError,
    IOStats,
    LinkedDeviceIO,
    LinkPool,
    ProtocolError,
    WriteError,
)
from drivers.connection import ConnectionBase
from drivers.template_base import DeviceSpec, TemplateBase
from gateway.model import PointValue


class _Link:
    """One TCP connection, one request at a time; reopened on the next request after a loss."""

    def __init__(self, conn: LineBusTcp) -> None:
        self.key = f"linebus://{conn.host}:{conn.port}"
        self.conn = conn
        self.lock = asyncio.Lock()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, line: str) -> dict[str, float]:
        async with self.lock:
            try:
                async with asyncio.timeout(self.conn.timeout_s):
                    if self._streams is None:
                        self._streams = await asyncio.open_connection(self.conn.host,
                                                                      self.conn.port)
                    reader, writer = self._streams
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    answer = (await reader.readline()).decode().strip()
            except TimeoutError:
                self.close()
                raise DeviceTimeout(f"{self.key}: no answer in {self.conn.timeout_s:g} s") from None
            except OSError as exc:
                self.close()
                raise DeviceOffline(f"{self.key}: {exc}") from None
        if not answer:
            self.close()
            raise DeviceOffline(f"{self.key}: connection closed")
        if answer.startswith("ERR "):
            raise ProtocolError(f"{self.key}: device says {answer[4:]}")
        try:
            data = json.loads(answer)
        except ValueError:
            raise ProtocolError(f"{self.key}: malformed answer {answer[:40]!r}") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.key}: expected an object, got {answer[:40]!r}")
        return {str(k): float(v) for k, v in data.items()}

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class LineBusDeviceIO(LinkedDeviceIO):
    """One device; the base class counts writes, refuses them once detached and names
    points that cannot be written."""

    def __init__(self, device: DeviceSpec, template: LineBusTemplate, link: _Link) -> None:
        self.device_id = device.id
        self.endpoint = link.key
        self.stats = IOStats()
        self._unit = device.unit_id
        self._points = {n: template.points[n] for n in (device.points or template.points)}
        self._template = template
        self._link = link

    async def read(self) -> dict[str, PointValue | None]:
        self.stats.requests += 1
        regs = await self._link.request(f"READ {self._unit}")
        return {n: (regs[p.reg] * p.scale if p.reg in regs else None)
                for n, p in self._points.items()}

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        spec = self.writable_point(self._template.points, self._template.writable, point)
        regs = await self._link.request(f"WRITE {self._unit} {spec.reg} "
                                        f"{float(value) / spec.scale}")
        back = regs.get(spec.reg)
        if back is None or abs(back * spec.scale - float(value)) > 1e-9:
            raise WriteError(f"{self.device_id}: wrote {point} = {value!r}, read back {back!r}")
        return back * spec.scale


class LineBusDriver(Driver[LineBusTcp, LineBusTemplate]):
    name: ClassVar[str] = "linebus"
    protocol: ClassVar[str] = "linebus"
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]] = (LineBusTcp,)
    template_model: ClassVar[type[TemplateBase]] = LineBusTemplate

    def __init__(self) -> None:
        self._pool: LinkPool[_Link] = LinkPool()

    def attach(self, device: DeviceSpec, template: LineBusTemplate,
               connection: LineBusTcp) -> LineBusDeviceIO:
        if not isinstance(template, LineBusTemplate) or not isinstance(connection, LineBusTcp):
            raise DriverError(f"{device.id}: the linebus driver needs a linebus template and "
                              f"a linebus_tcp connection")
        link = self._pool.attach(f"{connection.host}:{connection.port}",
                                 lambda: _Link(connection))
        return LineBusDeviceIO(device, template, link)

    async def close(self) -> None:
        for link in self._pool.take_all():
            link.close()
