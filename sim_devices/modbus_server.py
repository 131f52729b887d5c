"""Real pymodbus servers for the simulated devices: one per configured connection.

Every device on a connection is served behind that endpoint by its unit id (a pymodbus
SimDevice each). ``modbus_tcp`` is served with the socket (MBAP) framer and
``modbus_rtu_over_tcp`` with the RTU framer over TCP, both on 127.0.0.1. ``modbus_serial``
connections are NOT served by the simulator (it would need a serial port or a pty pair).

Per-request work is kept tiny: the action hook compares one generation number (see
sim_devices.registers) and checks a fault dict that is empty in normal operation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer

from gateway.config.models import ModbusRtuOverTcp, ModbusTcp
from sim_devices.faults import Fault, FaultKind, corrupt
from sim_devices.journal import JournalingTcpServer, WriteJournal
from sim_devices.registers import FC_BLOCK, DeviceImage

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVED_TYPES = ("modbus_tcp", "modbus_rtu_over_tcp")


class _Unit:
    """One device behind an endpoint: its image plus the faults it shows now."""

    def __init__(self, endpoint: EndpointServer, image: DeviceImage) -> None:
        self.endpoint = endpoint
        self.image = image
        self.faults: dict[FaultKind, Fault] = {}
        self.rng = random.Random(0)

    async def action(self, func_code: int, start: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None
                     ) -> ExcCodes | None:
        """pymodbus request hook: faults, lazy refresh, and writes through the model."""
        if self.faults:
            exc = self.faults.get(FaultKind.EXCEPTION)
            if exc is not None:
                return ExcCodes(exc.params["code"])
            slow = self.faults.get(FaultKind.SLOW)
            if slow is not None:
                await self.endpoint.delay(slow.params["delay_ms"] / 1000.0)
        block = FC_BLOCK[func_code]
        self.image.refresh(block, start, registers)
        if set_values is None:
            return None
        journal = self.endpoint.journal
        if journal is None:
            return self.image.write(block, start, address, registers, set_values)
        sent = list(set_values)  # the model may replace the values (clamps)
        points: dict[str, Any] = {}
        result = self.image.write(block, start, address, registers, set_values, points)
        journal.record(self.image.device_id, self.image.unit_id, block, address, sent,
                       points, result is None)
        return result


class EndpointServer:
    """The pymodbus server of one connection, with its fault switches."""

    def __init__(self, conn: ModbusTcp | ModbusRtuOverTcp, images: list[DeviceImage],
                 port: int | None = None, host: str = HOST,
                 journal: WriteJournal | None = None) -> None:
        """``journal``: where every write request that reaches a device model is
        recorded with its peer (None: not recorded, nothing paid)."""
        if conn.type not in SERVED_TYPES:
            raise ValueError(f"connection '{conn.id}': type '{conn.type}' is not served by the "
                             f"simulator (served: {', '.join(SERVED_TYPES)})")
        self.conn = conn
        self.host = host
        self.port = conn.port if port is None else port
        self.rtu = conn.type == "modbus_rtu_over_tcp"
        self.journal = journal
        self.units: dict[int, _Unit] = {}
        for image in images:
            if image.unit_id in self.units:
                raise ValueError(f"connection '{conn.id}': unit id {image.unit_id} is used by "
                                 f"'{self.units[image.unit_id].image.device_id}' and "
                                 f"'{image.device_id}'")
            self.units[image.unit_id] = _Unit(self, image)
        self.by_device = {u.image.device_id: u for u in self.units.values()}
        self.dropping = False
        self.refusing = False
        self._server: ModbusTcpServer | None = None
        self._delayed: set[asyncio.Task[Any]] = set()
        self._timeout_units: set[int] = set()
        self._garbage_units: set[int] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (the real one when asked for port 0)."""
        if self._server is not None:
            return self.port
        server_type = ModbusTcpServer if self.journal is None else JournalingTcpServer
        server = server_type(
            [u.image.sim_device(u.action) for u in self.units.values()],
            framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
            address=(self.host, self.port), trace_pdu=self._trace_pdu,  # type: ignore[arg-type]
            trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        log.info("serving %s (%s) on %s:%d: units %s", self.conn.id, self.conn.type, self.host,
                 self.port, sorted(self.units))
        return self.port

    async def stop(self) -> None:
        """Close the listener, every client connection and every delayed answer."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        for task in list(self._delayed):
            task.cancel()
        for _ in range(3):  # let pymodbus finish the request tasks it already scheduled
            await asyncio.sleep(0)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def connections(self) -> int:
        return len(self._server.active_connections) if self._server is not None else 0

    def drop_connections(self) -> int:
        """Close every client connection of this endpoint now; returns how many."""
        if self._server is None:
            return 0
        handlers = list(self._server.active_connections.values())
        for handler in handlers:
            handler.close()
        return len(handlers)

    async def delay(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._delayed.add(task)
        try:
            await asyncio.sleep(seconds)
        finally:
            if task is not None:
                self._delayed.discard(task)

    # -- faults -------------------------------------------------------------------------

    async def apply_faults(self) -> None:
        """Bring the endpoint in line with the faults its units carry now."""
        self._timeout_units = {uid for uid, u in self.units.items()
                               if FaultKind.TIMEOUT in u.faults}
        self._garbage_units = {uid for uid, u in self.units.items()
                               if FaultKind.GARBAGE in u.faults}
        for u in self.units.values():
            u.image.stuck = FaultKind.STUCK in u.faults
            garbage = u.faults.get(FaultKind.GARBAGE)
            if garbage is not None:
                u.rng.seed(garbage.params["seed"])
        self.dropping = any(FaultKind.DROP in u.faults for u in self.units.values())
        if self.dropping:
            self.drop_connections()
        refusing = any(FaultKind.REFUSE in u.faults for u in self.units.values())
        if refusing and not self.refusing:
            self.refusing = True
            await self.stop()
            log.info("%s: refusing connections (fault)", self.conn.id)
        elif not refusing and self.refusing:
            self.refusing = False
            await self.start()
            log.info("%s: accepting connections again", self.conn.id)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """Drop requests that must not be answered (returning None skips the request)."""
        if sending:
            return pdu
        if self.dropping:
            asyncio.get_running_loop().call_soon(self.drop_connections)
            return None
        if pdu.dev_id in self._timeout_units:
            return None
        if pdu.dev_id not in self.units:
            return None  # nobody is behind that unit id: no answer, as on a real bus
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not self._garbage_units:
            return data
        unit_pos = 0 if self.rtu else 6
        if len(data) <= unit_pos or data[unit_pos] not in self._garbage_units:
            return data
        return corrupt(data, unit_pos + 1, self.units[data[unit_pos]].rng)

