"""Modbus TCP pipelining (``max_in_flight`` > 1): several requests in flight on one
connection, told apart by transaction id, within a bounded window, one write and one
deadline per device read; the endpoint's failure behaviour kept (timeouts, garbage,
cancels, exception answers, closing).

Against the real pymodbus server for values, and against a scripted Modbus TCP server
(a real socket on loopback) where the test must decide when answers go out.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from pydantic import ValidationError
from test_modbus_driver_support import config_device, device_from, registers_for, serving

from drivers.base import DeviceOffline, DeviceTimeout, ProtocolError
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.pipeline import PipelinedEndpoint
from drivers.template import ModbusTemplate
from gateway.config.models import ModbusRtuOverTcp, ModbusTcp
from tests.waiting import until

METER = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
    "v_v": {"address": 2, "type": "uint16", "scale": 0.1},
    "f_hz": {"address": 0, "function": "input", "type": "uint16", "scale": 0.01},
})
VALUES = {"p_kw": 4.5, "v_v": 230.0, "f_hz": 50.0}
ONE_BLOCK = ModbusTemplate(nature="meter", points={
    "v_v": {"address": 2, "type": "uint16", "scale": 0.1}})


class ScriptedServer:
    """A Modbus TCP server that answers only when the test says so.

    Answers every FC3/FC4 request with registers holding ``value``; records every chunk
    of bytes it receives and the requests waiting for an answer.
    """

    def __init__(self, value: int = 2300) -> None:
        self.value = value
        self.chunks: list[bytes] = []
        self.waiting: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.max_waiting = 0
        self.connects = 0
        self.auto = False  # answer at once
        self.tamper: Any = None  # (frame) -> frame, applied to answers
        self.refuse: Any = None  # (fc, start, count) -> exception code or None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def conn(self, **kw: Any) -> ModbusTcp:
        return ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1", port=self.port,
                         **kw)

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.connects += 1
        buf = b""
        try:
            while data := await reader.read(65536):
                self.chunks.append(data)
                buf += data
                while len(buf) >= 6 and len(buf) >= 6 + struct.unpack(">H", buf[4:6])[0]:
                    end = 6 + struct.unpack(">H", buf[4:6])[0]
                    frame, buf = buf[:end], buf[end:]
                    self.waiting.append((writer, frame))
                    self.max_waiting = max(self.max_waiting, len(self.waiting))
                    if self.auto:
                        self.answer(len(self.waiting))
        finally:
            writer.close()

    def answer(self, n: int = 1) -> None:
        """Answer the ``n`` oldest requests."""
        for writer, frame in self.waiting[:n]:
            tid, _, _, unit, fc, start, count = struct.unpack(">HHHBBHH", frame[:12])
            code = self.refuse(fc, start, count) if self.refuse is not None else None
            if code is not None:
                pdu = struct.pack(">BB", fc | 0x80, code)
            else:
                pdu = struct.pack(f">BB{count}H", fc, 2 * count, *[self.value] * count)
            out = struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
            if self.tamper is not None:
                out = self.tamper(out)
            if not writer.is_closing():
                writer.write(out)
        del self.waiting[:n]


async def test_a_read_sends_all_its_requests_in_one_write_and_matches_the_answers() -> None:
    for window in (1, 4):
        server = await ScriptedServer().start()
        server.auto = True
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, server.conn(max_in_flight=window))
        try:
            assert await io.read() == {"p_kw": pytest.approx(2300 * 65536 * 0.001 + 2.3),
                                       "v_v": pytest.approx(230.0),
                                       "f_hz": pytest.approx(23.0)}
            assert io.pipeline_window == window
            assert io.stats.requests == 2  # holding 0..2 and input 0
        finally:
            await drv.close()
            await server.stop()
        if window == 1:  # one request, its answer, then the next
            assert len(server.chunks) == 2
        else:  # both requests in one write, answered by transaction id
            assert len(server.chunks) == 1 and len(server.chunks[0]) == 2 * 12


async def test_a_server_that_answers_one_request_at_a_time_gets_one_at_a_time(
        caplog: pytest.LogCaptureFixture) -> None:
    # pymodbus' own server answers the first request of a write and drops the rest.
    async with serving(device_from(1, registers_for(METER, VALUES))) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp(max_in_flight=4, timeout_s=0.3))
        try:
            with pytest.raises(DeviceTimeout):
                await io.read()
            assert io.pipeline_window == 1
            assert "one at a time from now on" in caplog.text
            assert await io.read() == pytest.approx(VALUES)
        finally:
            await drv.close()


async def test_requests_in_flight_never_exceed_the_window() -> None:
    server = await ScriptedServer().start()
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), ONE_BLOCK,
                      server.conn(max_in_flight=3, timeout_s=30.0)) for u in range(1, 9)]
    try:
        reads = [asyncio.create_task(io.read()) for io in ios]
        answered = 0
        while answered < len(ios):
            left = min(3, len(ios) - answered)
            await until(lambda left=left: len(server.waiting) == left, "the window to fill")
            server.answer(1)
            answered += 1
        results = await asyncio.gather(*reads)
    finally:
        await drv.close()
        await server.stop()
    assert results == [{"v_v": pytest.approx(230.0)}] * len(ios)
    assert server.max_waiting == 3
    assert server.connects == 1  # every read shared one connection


async def test_one_deadline_per_read_then_a_fresh_connection() -> None:
    server = await ScriptedServer().start()
    drv = ModbusDriver()
    io = drv.attach(config_device(), METER, server.conn(max_in_flight=4, timeout_s=0.2))
    try:
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.2 s reading .* dev1"):
            await io.read()  # the server holds both answers
        assert io.stats.timeouts == 1
        server.waiting.clear()
        server.auto = True
        assert await io.read() == {"p_kw": pytest.approx(2300 * 65536 * 0.001 + 2.3),
                                   "v_v": pytest.approx(230.0), "f_hz": pytest.approx(23.0)}
        assert server.connects == 2  # the late answers can never meet the next read
    finally:
        await drv.close()
        await server.stop()


async def test_an_answer_to_no_request_in_flight_fails_the_link_and_backs_off() -> None:
    server = await ScriptedServer().start()
    server.auto = True
    server.tamper = lambda frame: b"\x7f\x7f" + frame[2:]  # a transaction id nobody sent
    drv = ModbusDriver()
    io = drv.attach(config_device(), ONE_BLOCK,
                    server.conn(max_in_flight=4, reconnect_delay_s=30.0))
    try:
        with pytest.raises(ProtocolError, match="transaction 32639, which is not in flight"):
            await io.read()
        with pytest.raises(ProtocolError, match="garbled"):
            await io.read()  # the first garbage resynchronises at once (line noise) ...
        with pytest.raises(DeviceOffline, match=r"next reconnect in"):
            await io.read()  # ... the second starts the backoff
    finally:
        await drv.close()
        await server.stop()


async def test_a_cancelled_read_leaves_the_others_on_the_connection() -> None:
    server = await ScriptedServer().start()
    drv = ModbusDriver()
    a = drv.attach(config_device("a", unit=1), ONE_BLOCK, server.conn(max_in_flight=4))
    b = drv.attach(config_device("b", unit=2), ONE_BLOCK, server.conn(max_in_flight=4))
    try:
        first = asyncio.create_task(a.read())
        second = asyncio.create_task(b.read())
        await until(lambda: len(server.waiting) == 2, "both requests on the wire")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        server.answer(2)  # the late answer to the cancelled read is dropped quietly
        assert await second == {"v_v": pytest.approx(230.0)}
        server.auto = True
        assert await a.read() == {"v_v": pytest.approx(230.0)}
        assert server.connects == 1
    finally:
        await drv.close()
        await server.stop()


async def test_an_exception_answer_names_its_block_and_the_plan_splits() -> None:
    bridged = ModbusTemplate(nature="meter", points={
        "f_hz": {"address": 0, "function": "input", "type": "uint16", "scale": 0.01},
        "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
        "v_v": {"address": 3, "type": "uint16", "scale": 0.1}})
    server = await ScriptedServer().start()
    server.auto = True
    # register 2 does not exist: a read across it is refused ILLEGAL DATA ADDRESS
    server.refuse = lambda fc, start, count: 2 if fc == 3 and start <= 2 < start + count else None
    drv = ModbusDriver(max_gap=1)
    io = drv.attach(config_device(), bridged, server.conn(max_in_flight=4))
    try:
        assert [b.describe() for b in io.blocks] == ["holding 0+4", "input 0+1"]
        values = await io.read()
        assert values == {"p_kw": pytest.approx(2300 * 65536 * 0.001 + 2.3),
                          "v_v": pytest.approx(230.0), "f_hz": pytest.approx(23.0)}
        assert [b.describe() for b in io.blocks] == ["holding 0+2", "holding 3+1",
                                                      "input 0+1"]
    finally:
        await drv.close()
        await server.stop()


async def test_close_fails_the_reads_in_flight() -> None:
    server = await ScriptedServer().start()
    drv = ModbusDriver()
    io = drv.attach(config_device(), ONE_BLOCK, server.conn(max_in_flight=2))
    reading = asyncio.create_task(io.read())
    await until(lambda: len(server.waiting) == 1, "the request on the wire")
    await drv.close()
    with pytest.raises(DeviceOffline, match="lost"):
        await reading
    with pytest.raises(DeviceOffline, match="closed"):
        await io.read()
    await server.stop()


def test_only_modbus_tcp_pipelines() -> None:
    with pytest.raises(ValidationError, match="max_in_flight"):
        ModbusRtuOverTcp.model_validate({"id": "rtu", "type": "modbus_rtu_over_tcp",
                                         "host": "127.0.0.1", "max_in_flight": 4})
    ep = PipelinedEndpoint(ModbusTcp(id="t", type="modbus_tcp", host="h", max_in_flight=4))
    assert ep.pipeline_window == 4



async def test_modbus_tcp_uses_the_lean_link_by_default_with_one_request_in_flight() -> None:
    async with serving(device_from(1, registers_for(METER, VALUES))) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp())
        try:
            ep = drv.endpoint(io.endpoint)
            assert isinstance(ep, PipelinedEndpoint) and ep.pipeline_window == 1
            assert await io.read() == pytest.approx(VALUES)
            assert srv.connects == 1
        finally:
            await drv.close()


async def test_client_pymodbus_is_the_escape_hatch() -> None:
    async with serving(device_from(1, registers_for(METER, VALUES))) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp(client="pymodbus"))
        try:
            ep = drv.endpoint(io.endpoint)
            assert ep is not None and not isinstance(ep, PipelinedEndpoint)
            assert await io.read() == pytest.approx(VALUES)
            assert ep.connected and srv.connects == 1
        finally:
            await drv.close()


def test_rtu_over_tcp_stays_on_pymodbus() -> None:
    drv = ModbusDriver()
    conn = ModbusRtuOverTcp(id="rtu", type="modbus_rtu_over_tcp", host="127.0.0.1")
    io = drv.attach(config_device(), METER, conn)
    assert not isinstance(drv.endpoint(io.endpoint), PipelinedEndpoint)
    with pytest.raises(ValidationError, match="client"):  # RTU framing: no lean client
        ModbusRtuOverTcp.model_validate({"id": "rtu", "type": "modbus_rtu_over_tcp",
                                         "host": "127.0.0.1", "client": "lean"})
