"""Modbus driver failure handling against real pymodbus servers: exception codes, short
and garbled responses, timeouts, lost links, backoff and recovery."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from test_modbus_driver_support import (
    SimServer,
    config_device,
    device_from,
    free_port,
    registers_for,
    serving,
)

from drivers.base import DeviceOffline, DeviceTimeout, ProtocolError
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.endpoint import Client, ConnectionConfig, make_client
from drivers.template import ModbusTemplate
from gateway.config.models import ModbusTcp
from gateway.poller import Poller, PollJob
from gateway.state import DeviceState, SiteState
from tests.waiting import WAIT_S

METER = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
    "v_v": {"address": 2, "type": "uint16", "scale": 0.1},
    "f_hz": {"address": 0, "function": "input", "type": "uint16", "scale": 0.01},
})
VALUES = {"p_kw": 4.5, "v_v": 230.0, "f_hz": 50.0}


def tables() -> Any:
    return registers_for(METER, VALUES)


class CountingFactory:
    """Counts the pymodbus clients the driver creates (one per connect attempt)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, conn: ConnectionConfig, name: str) -> Client:
        self.calls += 1
        return make_client(conn, name)


async def test_exception_response_names_the_code_and_keeps_the_link() -> None:
    tpl = ModbusTemplate(nature="meter", points={"p_kw": {"address": 40070, "type": "int32"}})
    fail = {"on": True}

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        return ExcCodes.DEVICE_FAILURE if fail["on"] and fc == 4 else None

    async with serving(device_from(1, tables(), action)) as srv:
        drv = ModbusDriver()
        missing = drv.attach(config_device("missing"), tpl, srv.tcp())
        io = drv.attach(config_device("meter"), METER, srv.tcp())
        try:
            with pytest.raises(ProtocolError) as err:
                await missing.read()
            assert str(err.value) == ("ILLEGAL DATA ADDRESS (2) reading holding 40070+2 from "
                                      "missing (unit 1)")
            assert missing.stats.errors == 1
            assert missing.stats.last_error == str(err.value)
            with pytest.raises(ProtocolError,
                               match=r"SERVER DEVICE FAILURE \(4\) reading input 0\+1 from "
                                                     r"meter \(unit 1\)"):
                await io.read()
            fail["on"] = False
            assert await io.read() == pytest.approx(VALUES)
            assert srv.connects == 1  # an exception answer is a healthy link
        finally:
            await drv.close()


async def test_short_response_is_a_protocol_error() -> None:
    strip = {"on": True}

    def trace(sending: bool, data: bytes) -> bytes:
        # MBAP header (7 bytes), function code, byte count, registers: drop the last register
        if sending and strip["on"] and data[7] == 3:
            n = data[8] - 2
            return (data[:4] + (n + 3).to_bytes(2, "big") + data[6:8] + bytes([n])
                    + data[9:9 + n])
        return data

    async with serving(device_from(1, tables()), trace_packet=trace) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp())
        try:
            with pytest.raises(ProtocolError) as err:
                await io.read()
            # several devices share an endpoint: the message names both
            assert str(err.value) == (f"short response: 2 of 3 registers reading holding 0+3 "
                                      f"from dev1 (unit 1) on tcp://127.0.0.1:{srv.port}")
            assert io.stats.last_error == str(err.value)
            strip["on"] = False
            assert await io.read() == pytest.approx(VALUES)
            assert io.stats.last_error is None  # recovered: no stale error on show
        finally:
            await drv.close()


async def test_garbled_response_is_a_protocol_error_and_resynchronises() -> None:
    garble = {"on": True}

    def trace(sending: bool, data: bytes) -> bytes:
        if sending and garble["on"]:
            return data[:7] + b"\x55" + data[8:]  # a function code that does not exist
        return data

    async with serving(device_from(1, tables()), trace_packet=trace) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp(timeout_s=5.0))
        try:
            with pytest.raises(ProtocolError, match="garbled response"):
                await io.read()  # fails as soon as the frame arrives, not after 5 s
            garble["on"] = False
            assert await io.read() == pytest.approx(VALUES)
            assert srv.connects == 2
            assert io.stats.timeouts == 0
        finally:
            await drv.close()


@pytest.mark.parametrize("framer", [FramerType.SOCKET, FramerType.RTU])
async def test_timeout_drops_the_link_so_a_late_answer_is_never_misread(
        framer: FramerType) -> None:
    release = asyncio.Event()
    finished = asyncio.Event()
    held = {"first": True}

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        if fc == 3 and held["first"]:
            held["first"] = False
            await release.wait()  # answer late: after the client gave up
            finished.set()
        return None

    async with serving(device_from(1, tables(), action), framer=framer) as srv:
        conn = srv.tcp(timeout_s=0.2) if framer is FramerType.SOCKET else \
            srv.rtu_over_tcp(timeout_s=0.2)
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, conn)
        try:
            with pytest.raises(DeviceTimeout, match=r"no answer within 0.2 s reading holding "
                                                    r"0\+3 from dev1 \(unit 1\)"):
                await io.read()
            assert io.stats.timeouts == 1
            release.set()
            await finished.wait()
            # holding and input blocks both come back right, over a new connection
            assert await io.read() == pytest.approx(VALUES)
            assert await io.read() == pytest.approx(VALUES)
            assert srv.connects == 2
        finally:
            await drv.close()


async def test_configured_retries_hide_one_lost_answer() -> None:
    held = {"first": True}
    release = asyncio.Event()

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        if fc == 3 and held["first"]:
            held["first"] = False
            await release.wait()
        return None

    async with serving(device_from(1, tables(), action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp(timeout_s=0.2, retries=1))
        try:
            assert await io.read() == pytest.approx(VALUES)
            assert io.stats.timeouts == 1
            assert io.stats.errors == 0
        finally:
            release.set()
            await drv.close()


async def test_unreachable_endpoint_fails_fast_while_backing_off() -> None:
    factory = CountingFactory()
    drv = ModbusDriver(client_factory=factory)
    conn = ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1", port=free_port(),
                     reconnect_delay_s=30.0, reconnect_delay_max_s=60.0)
    io = drv.attach(config_device(), METER, conn)
    try:
        with pytest.raises(DeviceOffline, match="cannot connect"):
            await io.read()
        for _ in range(3):  # no new connect attempt, no wait: the poller is never held up
            with pytest.raises(DeviceOffline, match=r"next reconnect in (29|30)\.\d\d s"):
                await io.read()
        assert factory.calls == 1
        assert io.stats.errors == 4
    finally:
        await drv.close()


async def test_server_restart_backs_off_then_recovers_by_itself() -> None:
    factory = CountingFactory()
    server = await SimServer([device_from(1, tables())]).start()
    port = server.port
    drv = ModbusDriver(client_factory=factory)
    io = drv.attach(config_device(), METER,
                    server.tcp(reconnect_delay_s=0.05, reconnect_delay_max_s=0.2))
    try:
        assert await io.read() == pytest.approx(VALUES)
        await server.stop()
        with pytest.raises(DeviceOffline, match=r"lost|cannot connect"):
            await io.read()
        # while down: attempts are spaced by a doubling delay, every read in between fails fast
        failures = 0
        for _ in range(40):
            with pytest.raises(DeviceOffline):
                await io.read()
            failures += 1
            await asyncio.sleep(0.01)
        assert 1 <= factory.calls < failures
        server = await SimServer([device_from(1, tables())]).start(port)
        recovered = None
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                recovered = await io.read()
                break
            except DeviceOffline:
                await asyncio.sleep(0.02)
        assert recovered == pytest.approx(VALUES)
        assert io.stats.reconnects == 1
        assert server.connects == 1
    finally:
        await drv.close()
        await server.stop()


async def test_close_fails_a_request_in_flight() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        entered.set()
        await release.wait()
        return None

    async with serving(device_from(1, tables(), action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp(timeout_s=10.0))
        reading = asyncio.create_task(io.read())
        await entered.wait()  # the request is on the wire, its answer held back
        await drv.close()
        with pytest.raises(DeviceOffline, match="lost"):
            await reading
        release.set()


async def test_reads_after_the_driver_closed_fail_without_reconnecting() -> None:
    async with serving(device_from(1, tables())) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(), METER, srv.tcp())
        assert await io.read() == pytest.approx(VALUES)
        await drv.close()
        with pytest.raises(DeviceOffline, match="closed"):
            await io.read()
        assert srv.connects == 1


async def test_a_cancel_racing_with_the_answer_is_not_lost() -> None:
    # Python 3.11's asyncio.wait_for (used inside pymodbus) returns the answer and drops
    # the cancel when both are ready at once; a poller's stop() would then wait forever.
    victim: dict[str, asyncio.Task[Any]] = {}

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending and "task" in victim:
            victim.pop("task").cancel()  # the cancel lands together with the answer
        return data

    def factory(conn: ConnectionConfig, name: str) -> Client:
        client = make_client(conn, name)
        client.ctx.trace_packet = trace
        return client

    async with serving(device_from(1, tables())) as srv:
        drv = ModbusDriver(client_factory=factory)
        io = drv.attach(config_device(), METER, srv.tcp())
        try:
            assert await io.read() == pytest.approx(VALUES)  # connected, plan warmed up
            task = asyncio.create_task(io.read())
            victim["task"] = task
            with pytest.raises(asyncio.CancelledError):
                await task
            assert io.stats.requests == 3  # 2 for the first read, then it stopped
        finally:
            await drv.close()


async def test_recovery_clears_the_last_error_the_status_shows() -> None:
    fail = {"on": True}

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        return ExcCodes.DEVICE_BUSY if fail["on"] else None

    state = SiteState()
    state.add_device(DeviceState("meter1", METER.nature, max_age_s=60.0))
    async with serving(device_from(1, tables(), action)) as srv:
        drv = ModbusDriver()
        job = PollJob(drv.attach(config_device("meter1"), METER, srv.tcp()), 1.0)
        poller = Poller(state)
        try:
            assert not await poller.poll_once(job)
            health = state.devices["meter1"].health
            assert "SERVER DEVICE BUSY" in (health.last_error or "")
            fail["on"] = False
            assert await poller.poll_once(job)
        finally:
            await drv.close()
    assert health.last_error is None
    assert state.device_snapshot("meter1")["last_error"] is None
    assert job.io.stats.last_error is None
    assert health.errors == 1  # the history stays counted
