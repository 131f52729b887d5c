"""Cheap Modbus TCP servers for the benchmarks, spread over several processes.

The benches measure the client, so the servers must never be the bottleneck: each server
process serves a slice of the endpoints with a few lines of asyncio (a register table per
unit, frames parsed in a loop, so pipelined requests are answered as they come), and its
CPU use is measured per phase so a bench can refuse a result from a saturated server.
Register tables are built from the shipped templates: every declared register, template
constants and SunSpec scale factors exist; values are plausible constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import struct
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from drivers import codec  # noqa: E402
from drivers.template import Function, ModbusTemplate, load_template, template_names  # noqa: E402

_MBAP = struct.Struct(">HHHB")
_REQ = struct.Struct(">BHH")
Tables = dict[int, dict[int, list[int]]]  # function code -> address -> value (list[1])


def modbus_templates() -> list[str]:
    return [n for n in template_names() if load_template(n).protocol == "modbus"]


def tables_for(template: ModbusTemplate) -> dict[int, dict[int, int]]:
    """Function code (1-4) -> address -> register (or bit) value for one device."""
    out: dict[int, dict[int, int]] = {1: {}, 2: {}, 3: {}, 4: {}}
    fc = {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}
    out[3].update({a: v & 0xFFFF for a, v in template.constants.items()})
    for pt in template.points.values():
        if pt.scale_factor is not None:
            out[3].setdefault(pt.scale_factor, 0)
        if pt.function.is_bit:
            out[fc[pt.function]][pt.address] = 0
            continue
        value: Any = next(iter(pt.enum)) if pt.enum else (pt.min if pt.min is not None
                                                           else 1.0)
        try:
            regs = codec.encode_clamped(pt, value, 0 if pt.scale_factor is not None else None)
        except Exception:  # a string or odd type: zeros are fine for throughput
            regs = [0] * pt.width
        for i, r in enumerate(regs):
            out[fc[pt.function]][pt.address + i] = int(r) & 0xFFFF
    return out


class _Serve(asyncio.Protocol):
    def __init__(self, units: dict[int, dict[int, dict[int, int]]]) -> None:
        self.units = units
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = bytearray()
        while len(buf) >= 8:
            tid, _, length, unit = _MBAP.unpack_from(buf)
            end = 6 + length
            if len(buf) < end:
                break
            fc = buf[7]
            pdu = self._answer(unit, fc, bytes(buf[7:end]))
            out += _MBAP.pack(tid, 0, len(pdu) + 1, unit)
            out += pdu
            del buf[:end]
        if out and self.transport is not None:
            self.transport.write(out)

    def _answer(self, unit: int, fc: int, pdu: bytes) -> bytes:
        table = self.units.get(unit)
        if table is None:
            return bytes((fc | 0x80, 11))
        if fc in (5, 6, 16):  # stored, so a write's read-back shows it as on a device
            _, address, value = _REQ.unpack_from(pdu)
            if fc == 5:
                table[1][address] = 1 if value == 0xFF00 else 0
            elif fc == 6:
                table[3][address] = value
            else:
                count = value
                for i, v in enumerate(struct.unpack_from(f">{count}H", pdu, 6)):
                    table[3][address + i] = v
            return pdu[:5]
        if fc not in (1, 2, 3, 4):
            return bytes((fc | 0x80, 1))
        _, address, count = _REQ.unpack_from(pdu)
        regs = table[fc]
        values = [regs.get(a, 0) for a in range(address, address + count)]
        if fc in (1, 2):
            packed = bytearray((count + 7) // 8)
            for i, v in enumerate(values):
                if v:
                    packed[i // 8] |= 1 << (i % 8)
            return bytes((fc, len(packed))) + packed
        return struct.pack(f">BB{count}H", fc, 2 * count, *values)


def _server_main(endpoints: list[list[tuple[int, str]]], pipe: Connection) -> None:
    """Serve each endpoint (a list of (unit, template)) on its own port; report the ports."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cache: dict[str, dict[int, dict[int, int]]] = {}
        servers = []
        ports = []
        for units in endpoints:
            tables = {}
            for unit, tpl in units:
                if tpl not in cache:
                    template = load_template(tpl)
                    assert isinstance(template, ModbusTemplate)
                    cache[tpl] = tables_for(template)
                tables[unit] = {fc: dict(regs) for fc, regs in cache[tpl].items()}
            srv = await loop.create_server(lambda t=tables: _Serve(t), "127.0.0.1", 0)  # type: ignore[misc]
            servers.append(srv)
            ports.append(srv.sockets[0].getsockname()[1])
        pipe.send(ports)
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        await asyncio.wait_for(stop.wait(), 3600)
        for srv in servers:
            srv.close()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerFarm:
    """Server processes for ``endpoints`` (each a list of (unit, template)), a few per process."""

    endpoints: list[list[tuple[int, str]]]
    per_process: int = 100  # devices per server process (each stays well below a core)

    def __post_init__(self) -> None:
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        self.ports: list[int] = []

    def start(self) -> list[int]:
        ctx = mp.get_context("spawn")
        groups: list[list[list[tuple[int, str]]]] = [[]]
        count = 0
        for ep in self.endpoints:
            if count + len(ep) > self.per_process and groups[-1]:
                groups.append([])
                count = 0
            groups[-1].append(ep)
            count += len(ep)
        for group in groups:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_server_main, args=(group, child), daemon=True)
            p.start()
            self.procs.append(p)
            self.pipes.append(parent)
        for parent in self.pipes:
            if not parent.poll(120):
                raise RuntimeError("a bench server process did not start")
            self.ports.extend(parent.recv())
        return self.ports

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def stop(self) -> None:
        for parent in self.pipes:
            with contextlib.suppress(OSError):
                parent.send("stop")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


class CpuWatch:
    """CPU share of one core used by each server process between start() and stop()."""

    def __init__(self, farm: ServerFarm) -> None:
        self.farm = farm
        self.t0 = 0.0
        self.c0: list[float] = []

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self.farm.cpu()

    def shares(self) -> list[float]:
        wall = time.perf_counter() - self.t0
        return [(c1 - c0) / wall for c0, c1 in zip(self.c0, self.farm.cpu(), strict=True)]
