"""Poll rounds on the lean Modbus TCP link (one request at a time): the devices of an
endpoint due together are read as one round, and each device's read in it means what
its own read would (values, errors, statistics, its own deadline, the same requests one
at a time on the wire), a write waiting for the link goes between two devices, and a
link that fails mid-round fails only the device it failed under.

Against the scripted Modbus TCP server of ``test_modbus_pipeline`` (a real socket on
loopback), where the test decides when each answer goes out.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from test_modbus_driver_support import config_device
from test_modbus_pipeline import METER, ONE_BLOCK, ScriptedServer

from drivers.base import DeviceOffline, DeviceTimeout, DriverError, RoundResult
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.pipeline import PipelinedEndpoint, _Link
from drivers.template import ModbusTemplate
from gateway.config.models import ModbusTcp
from tests.waiting import until

METER_VALUES = {"p_kw": pytest.approx(2300 * 65536 * 0.001 + 2.3),
                "v_v": pytest.approx(230.0), "f_hz": pytest.approx(23.0)}


def _units(chunks: list[bytes]) -> list[tuple[int, int]]:
    """(unit, function code) of every request frame the server received, in order."""
    out = []
    data = b"".join(chunks)
    while data:
        length = struct.unpack(">H", data[4:6])[0]
        out.append((data[6], data[7]))
        data = data[6 + length:]
    return out


@asynccontextmanager
async def _site(template: ModbusTemplate = ONE_BLOCK, units: tuple[int, ...] = (1, 2, 3),
                max_gap: int = 0, **conn: Any
                ) -> AsyncIterator[tuple[ScriptedServer, ModbusDriver, list[Any]]]:
    """The scripted server, and devices m1, m2... on one connection to it."""
    server = await ScriptedServer().start()
    drv = ModbusDriver(max_gap=max_gap)
    try:
        yield server, drv, [drv.attach(config_device(f"m{u}", unit=u), template,
                                       server.conn(**conn)) for u in units]
    finally:
        await drv.close()
        await server.stop()


async def _round(ios: list[Any]) -> list[RoundResult]:
    reader = ios[0].read_round
    assert reader is not None and all(io.read_round is reader for io in ios)
    return await reader(ios)


async def test_a_round_reads_each_device_as_its_own_read_would() -> None:
    async with _site(METER) as (server, _, ios):
        server.auto = True
        results = await _round(ios)
        assert [values for _, values, _ in results] == [METER_VALUES] * 3
        assert all(latency > 0 for latency, _, _ in results)
        stamps = [ts for _, _, ts in results]
        assert stamps == sorted(stamps)  # each stamped when its own read ended
        assert [io.stats.requests for io in ios] == [2, 2, 2]
        # the wire saw what three reads one after the other send: one request at a time
        assert _units(server.chunks) == [(1, 3), (1, 4), (2, 3), (2, 4), (3, 3), (3, 4)]
        assert len(server.chunks) == 6 and server.max_waiting == 1
        assert [await io.read() for io in ios] == [METER_VALUES] * 3
        assert server.connects == 1


async def test_each_device_of_a_round_has_its_own_deadline() -> None:
    """The round's deadline moves on with each device (its own timeout from its own first
    request): when the first device's deadline comes while the second is being read, the
    link's timer finds nothing due and re-arms for the second's. A deadline per round
    would fail the round there."""
    ep = PipelinedEndpoint(ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1",
                                     port=9, timeout_s=30.0))  # never connected
    link = _Link(ep)
    link.transport = _Wire()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + 0.05
    read = b"\x03\x00\x00\x00\x01"
    rnd = link.send_round([(1, 3, read), (2, 3, read)], [1, 2], first_deadline)
    link.watch(first_deadline)
    link.data_received(_answer(1, 1, 0x1234))  # the first device is read: the second's turn
    assert rnd.deadline >= first_deadline + 29.0
    await asyncio.sleep(0.1)  # past the first deadline: the link's timer has fired
    assert not rnd.fut.done()
    assert link._timer is not None and link._timer_at == rnd.deadline
    link.data_received(_answer(2, 2, 0x5678))
    assert rnd.fut.result() == [b"\x03\x02\x12\x34", b"\x03\x02\x56\x78"]
    assert len(rnd.marks) == 2
    link.fail_all(RuntimeError("done"))


async def test_a_device_that_times_out_fails_alone_and_the_link_is_dropped() -> None:
    async with _site(timeout_s=0.2) as (server, _, ios):
        reading = asyncio.create_task(_round(ios))
        await until(lambda: len(server.waiting) == 1, "the first request")
        server.answer(1)  # the second device never answers
        results = await asyncio.wait_for(reading, 5)
        assert len(results) == 2  # the third is left to its own read
        assert results[0][1] == {"v_v": pytest.approx(230.0)}
        error = results[1][1]
        assert isinstance(error, DeviceTimeout)
        assert "no answer within 0.2 s reading holding 2+1 from m2 (unit 2)" in str(error)
        assert (ios[1].stats.timeouts, ios[1].stats.errors) == (1, 1)
        assert ios[1].stats.last_error == str(error)
        assert (ios[0].stats.errors, ios[2].stats.requests) == (0, 0)
        server.waiting.clear()
        server.auto = True
        assert await ios[2].read() == {"v_v": pytest.approx(230.0)}
        assert server.connects == 2  # a late answer can never meet the next request


async def test_a_link_lost_mid_round_fails_the_device_it_was_lost_under() -> None:
    async with _site(reconnect_delay_s=0.05) as (server, _, ios):
        reading = asyncio.create_task(_round(ios))
        await until(lambda: len(server.waiting) == 1, "the first request")
        server.answer(1)
        await until(lambda: len(server.waiting) == 1, "the second request")
        server.waiting[0][0].close()  # the server hangs up under it
        results = await asyncio.wait_for(reading, 5)
        assert len(results) == 2
        assert results[0][1] == {"v_v": pytest.approx(230.0)}
        assert isinstance(results[1][1], DeviceOffline)
        assert "connection to" in str(results[1][1]) and "lost" in str(results[1][1])
        assert ios[1].stats.errors == 1


async def test_a_write_waiting_for_the_link_goes_between_two_devices() -> None:
    async with _site() as (server, drv, ios):
        ep = drv.endpoint(ios[0].endpoint)
        assert isinstance(ep, PipelinedEndpoint)
        reading = asyncio.create_task(_round(ios))
        await until(lambda: len(server.waiting) == 1, "the first device's request")
        writing = asyncio.create_task(ep.write_registers(7, [42], 3, ios[2].stats, "m3"))
        await until(lambda: bool(ep._slot_waiters), "the write waiting for the link")
        server.answer(1)
        results = await asyncio.wait_for(reading, 5)
        assert len(results) == 1  # the round ended after the device it was on
        await until(lambda: len(server.waiting) == 1, "the write on the wire")
        assert _units(server.chunks)[-1] == (3, 6)  # the write went next, not after m2, m3
        server.answer(1)
        await asyncio.wait_for(writing, 5)
        server.auto = True
        server.answer(len(server.waiting))
        rest = await _round(ios[1:])
        assert [values for _, values, _ in rest] == [{"v_v": pytest.approx(230.0)}] * 2


async def test_a_refused_block_splits_its_device_which_is_read_again_on_its_own() -> None:
    bridged = ModbusTemplate(nature="meter", points={
        "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
        "v_v": {"address": 3, "type": "uint16", "scale": 0.1}})
    async with _site(bridged, (1, 2), max_gap=1) as (server, _, ios):
        server.auto = True
        # no register 2: a read across it is refused ILLEGAL DATA ADDRESS
        server.refuse = lambda fc, start, count: 2 if start <= 2 < start + count else None
        results = await _round(ios)
        assert results == []  # the first read was refused: it is split, nothing is lost
        assert [b.describe() for b in ios[0].blocks] == ["holding 0+2", "holding 3+1"]
        assert ios[0].stats.errors == 0
        results = await _round(ios)
        assert len(results) == 1  # the second device splits now; the first read well
        assert results[0][1] == {"p_kw": pytest.approx(2300 * 65536 * 0.001 + 2.3),
                                 "v_v": pytest.approx(230.0)}
        assert await ios[1].read() == results[0][1]


async def test_a_cancelled_round_leaves_the_link_to_the_next_read() -> None:
    async with _site(units=(1, 2)) as (server, _, ios):
        reading = asyncio.create_task(_round(ios))
        await until(lambda: len(server.waiting) == 1, "the first request")
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        server.value = 1111
        server.answer(1)  # the late answer to the cancelled round is dropped quietly
        server.value = 2300
        server.auto = True
        assert await ios[1].read() == {"v_v": pytest.approx(230.0)}
        assert server.connects == 1


async def test_no_round_on_a_pipelined_link_or_with_retries_or_a_closed_link() -> None:
    async with _site(units=(1, 2), max_in_flight=4) as (server, _, piped):
        server.auto = True
        drv2 = ModbusDriver()
        retried = [drv2.attach(config_device(f"r{u}", unit=u), ONE_BLOCK,
                               server.conn(retries=1)) for u in (1, 2)]
        assert await _round(piped) == []
        assert await _round(retried) == []
        assert server.chunks == []
        await drv2.close()
        assert await _round(retried) == []  # detached: each read says so itself
        with pytest.raises(DriverError):
            await retried[0].read()


class _Wire:
    """The transport of a link under test: keeps what the link writes."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _answer(tid: int, unit: int, value: int) -> bytes:
    pdu = struct.pack(">BBH", 3, 2, value)
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


@pytest.mark.parametrize("pieces", ["every cut", "byte by byte"])
async def test_answers_cut_and_joined_anyhow_reach_their_own_reads(pieces: str) -> None:
    """TCP delivers bytes, not frames: two answers arrive whole, cut at any byte, or one
    byte at a time, and each still reaches the read it answers, nothing left over."""
    stream = _answer(1, 1, 0x1234) + _answer(2, 2, 0x5678) + _answer(3, 2, 0x0042)
    if pieces == "every cut":
        splits = [[stream[:i], stream[i:]] for i in range(1, len(stream))]
    else:
        splits = [[stream[i:i + 1] for i in range(len(stream))]]
    loop = asyncio.get_running_loop()
    for chunks in splits:
        ep = PipelinedEndpoint(ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1",
                                         port=9, max_in_flight=4))  # never connected
        link = _Link(ep)
        link.transport = _Wire()  # type: ignore[assignment]
        group = link.send([(1, 3, b"\x03\x00\x00\x00\x01"), (2, 3, b"\x03\x00\x00\x00\x01")],
                          loop.time() + 5)
        rnd = link.send_round([(2, 3, b"\x03\x00\x00\x00\x01")], [1], loop.time() + 5)
        for chunk in chunks:
            link.data_received(chunk)
        assert group.fut.result() == [b"\x03\x02\x12\x34", b"\x03\x02\x56\x78"]
        assert rnd.fut.result() == [b"\x03\x02\x00\x42"]
        assert not link._buf and not link.pending
        link.fail_all(RuntimeError("done"))
