"""The Modbus driver: TCP, RTU over TCP and serial RTU links, shared per endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from drivers.base import Driver, DriverError
from drivers.connection import ConnectionBase
from drivers.modbus.connection import CONNECTION_MODELS, ModbusConnection, ModbusTcp
from drivers.modbus.device import ModbusDeviceIO
from drivers.modbus.endpoint import Client, ConnectionConfig, Endpoint, endpoint_key, make_client
from drivers.modbus.pipeline import PipelinedEndpoint
from drivers.modbus.rounds import ModbusRounds
from drivers.modbus.template import ModbusTemplate
from drivers.template_base import DeviceSpec, TemplateBase


class ModbusDriver(Driver[ModbusConnection, ModbusTemplate]):
    """Attach devices; each endpoint (host:port or serial port) gets one connection and one
    lock for all unit ids behind it, opened on the first request and closed when the last
    device detaches.

    ``max_gap``: undeclared registers a coalesced read may bridge (0 = never read an
    address the template does not declare; devices differ in how they answer those).

    Modbus TCP goes through the lean link of ``pipeline`` (our own framing; up to
    ``max_in_flight`` requests at once, default 1) unless its connection says ``client:
    pymodbus``; RTU over TCP and serial go through pymodbus clients. Both have the same
    outage handling (backoff reset only on a good answer, garbage frames, one log line per
    outage), each tested against misbehaving servers.
    ``client_factory`` makes the pymodbus clients; passing one keeps Modbus TCP on pymodbus
    too (fault-injection tests).
    """

    name: ClassVar[str] = "modbus"
    protocol: ClassVar[str] = "modbus"
    connection_models: ClassVar[tuple[type[ConnectionBase], ...]] = CONNECTION_MODELS
    template_model: ClassVar[type[TemplateBase]] = ModbusTemplate

    def __init__(self, *, max_gap: int = 0,
                 client_factory: Callable[[ConnectionConfig, str], Client] = make_client
                 ) -> None:
        if not 0 <= max_gap <= 125:
            raise ValueError(f"max_gap must be 0..125 registers (found {max_gap})")
        self.max_gap = max_gap
        self._client_factory = client_factory
        self._endpoints: dict[str, Endpoint] = {}
        self._devices: dict[int, ModbusDeviceIO] = {}
        self._rounds: dict[str, ModbusRounds] = {}

    def attach(self, device: DeviceSpec, template: ModbusTemplate,
               connection: ModbusConnection, *, max_gap: int | None = None) -> ModbusDeviceIO:
        """Bind ``device`` to ``template`` over ``connection``; no I/O yet."""
        if not isinstance(template, ModbusTemplate):
            raise DriverError(f"{device.id}: template is not a Modbus template")
        if not isinstance(connection, CONNECTION_MODELS):
            raise DriverError(f"{device.id}: the modbus driver cannot use connection "
                              f"'{getattr(connection, 'id', connection)}' of type "
                              f"'{getattr(connection, 'type', type(connection).__name__)}' "
                              f"(it serves {', '.join(self.connection_types())})")
        key = endpoint_key(connection)
        ep = self._endpoints.get(key)
        if ep is None:
            if isinstance(connection, ModbusTcp) and connection.client == "lean" \
                    and self._client_factory is make_client:
                ep = PipelinedEndpoint(connection)
            else:
                ep = Endpoint(connection, self._client_factory)
        io = ModbusDeviceIO(device.id, device.unit_id, template, ep, device.points,
                            self.max_gap if max_gap is None else max_gap, self._detach)
        if isinstance(ep, PipelinedEndpoint):  # its devices due together read as a round
            rounds = self._rounds.get(key)
            if rounds is None or rounds.ep is not ep:
                rounds = self._rounds[key] = ModbusRounds(ep)
            io.read_round = rounds
        self._endpoints[key] = ep
        ep.refs += 1
        self._devices[id(io)] = io
        return io

    def endpoint(self, key: str) -> Endpoint | None:
        """The shared link called ``key`` (e.g. "tcp://127.0.0.1:5020"), for diagnostics."""
        return self._endpoints.get(key)

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return dict(self._endpoints)

    def _detach(self, io: ModbusDeviceIO) -> None:
        if self._devices.pop(id(io), None) is None:
            return
        ep = self._endpoints.get(io.endpoint)
        if ep is None:
            return
        ep.refs -= 1
        if ep.refs <= 0:
            ep.close()
            del self._endpoints[io.endpoint]
            self._rounds.pop(io.endpoint, None)

    async def detach(self, io: ModbusDeviceIO) -> None:
        """Detach one device (same as ``await io.close()``)."""
        await io.close()

    async def close(self) -> None:
        for ep in self._endpoints.values():
            ep.close()
        self._endpoints.clear()
        self._devices.clear()
        self._rounds.clear()
