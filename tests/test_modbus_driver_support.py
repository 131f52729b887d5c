"""Helpers for the Modbus driver tests: real pymodbus servers on 127.0.0.1 (no tests here).

A device's registers are given as plain address -> value maps (built from a template
with the same codec the gateway decodes with); addresses not given do not exist on the
simulated device and answer ILLEGAL DATA ADDRESS, as on many real devices.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers import codec
from drivers.template import Function, ModbusTemplate
from gateway.config.models import Device, ModbusRtuOverTcp, ModbusSerial, ModbusTcp
from gateway.model import PointValue

_FAR = 65000  # a placeholder register so no table of the simulated device is empty


def _runs(values: dict[int, int]) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for addr in sorted(values):
        if out and out[-1][0] + len(out[-1][1]) == addr:
            out[-1][1].append(values[addr])
        else:
            out.append((addr, [values[addr]]))
    return out


def _reg_blocks(values: dict[int, int]) -> list[SimData]:
    blocks = [SimData(a, values=v, datatype=DataType.REGISTERS) for a, v in _runs(values)]
    return blocks or [SimData(_FAR, values=0, datatype=DataType.REGISTERS)]


def _bit_blocks(values: dict[int, bool]) -> list[SimData]:
    if not values:
        return [SimData(_FAR, values=[False] * 16, datatype=DataType.BITS)]
    hi = max(values) + 1
    bits = [bool(values.get(a, False)) for a in range(hi)]
    return [SimData(0, values=bits, datatype=DataType.BITS)]


def sim_device(unit: int, *, holding: dict[int, int] | None = None,
               input: dict[int, int] | None = None, coils: dict[int, bool] | None = None,
               discrete: dict[int, bool] | None = None, action: Any = None) -> SimDevice:
    """A simulated device with four separate tables (bit-addressed coils/discretes)."""
    return SimDevice(id=unit, action=action, simdata=(
        _bit_blocks(coils or {}), _bit_blocks(discrete or {}),
        _reg_blocks(holding or {}), _reg_blocks(input or {})))


def registers_for(template: ModbusTemplate, values: dict[str, PointValue],
                  sf: dict[int, int] | None = None) -> dict[Function, dict[int, Any]]:
    """Tables holding ``values`` for the template's points (plus constants and sf)."""
    tables: dict[Function, dict[int, Any]] = {f: {} for f in Function}
    tables[Function.HOLDING].update(template.constants)
    for addr, exp in (sf or {}).items():
        tables[Function.HOLDING][addr] = exp & 0xFFFF
    for name, value in values.items():
        pt = template.points[name]
        exp = None if pt.scale_factor is None else (sf or {}).get(pt.scale_factor)
        if pt.function.is_bit:
            tables[pt.function][pt.address] = bool(value)
            continue
        for i, reg in enumerate(codec.encode(pt, value, exp)):
            tables[pt.function][pt.address + i] = reg
    return tables


def device_from(unit: int, tables: dict[Function, dict[int, Any]], action: Any = None
                ) -> SimDevice:
    return sim_device(unit, holding=tables[Function.HOLDING], input=tables[Function.INPUT],
                      coils=tables[Function.COIL], discrete=tables[Function.DISCRETE],
                      action=action)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimServer:
    """A pymodbus TCP server on loopback; counts the connections it accepts."""

    def __init__(self, devices: Iterable[SimDevice], *, framer: FramerType = FramerType.SOCKET,
                 trace_packet: Callable[[bool, bytes], bytes] | None = None) -> None:
        self.devices = list(devices)
        self.framer = framer
        self.trace_packet = trace_packet
        self.connects = 0
        self.port = 0
        self._server: ModbusTcpServer | None = None

    def _on_connect(self, connected: bool) -> None:
        if connected:
            self.connects += 1

    async def start(self, port: int = 0) -> SimServer:
        self._server = ModbusTcpServer(self.devices, framer=self.framer,
                                       address=("127.0.0.1", port),
                                       trace_packet=self.trace_packet,
                                       trace_connect=self._on_connect)
        await self._server.serve_forever(background=True)
        self.port = int(self._server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
            for _ in range(5):  # let the closed connections' callbacks run
                await asyncio.sleep(0)

    def tcp(self, conn_id: str = "link", **kw: Any) -> ModbusTcp:
        return ModbusTcp(id=conn_id, type="modbus_tcp", host="127.0.0.1", port=self.port, **kw)

    def rtu_over_tcp(self, conn_id: str = "link", **kw: Any) -> ModbusRtuOverTcp:
        return ModbusRtuOverTcp(id=conn_id, type="modbus_rtu_over_tcp", host="127.0.0.1",
                                port=self.port, **kw)

    def serial_url(self, conn_id: str = "link", **kw: Any) -> ModbusSerial:
        """A serial connection through pyserial's socket:// URL to this (RTU) server."""
        return ModbusSerial(id=conn_id, type="modbus_serial",
                            port=f"socket://127.0.0.1:{self.port}", **kw)


@asynccontextmanager
async def serving(*devices: SimDevice, framer: FramerType = FramerType.SOCKET,
                  trace_packet: Callable[[bool, bytes], bytes] | None = None
                  ) -> AsyncIterator[SimServer]:
    server = await SimServer(devices, framer=framer, trace_packet=trace_packet).start()
    try:
        yield server
    finally:
        await server.stop()


def config_device(device_id: str = "dev1", unit: int = 1, nature: str = "meter",
                  points: list[str] | None = None) -> Device:
    return Device(id=device_id, nature=nature, template="test", connection="link",
                  unit_id=unit, points=points)  # type: ignore[arg-type]
