"""The lean Modbus TCP link (the default for modbus_tcp) against misbehaving servers on
127.0.0.1, pipelined (``max_in_flight`` > 1) and one request at a time (the default,
the ``window`` fixture): every request in flight ends (answer, error or timeout), the
device goes offline and is retried with a backoff that only a good answer resets, an
outage is logged once, and nothing hangs or ends in a traceback.

The pymodbus path has the same tests in test_modbus_driver_outage.py and
test_modbus_driver_faults.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from test_modbus_driver_support import config_device

from drivers.base import DeviceOffline, DeviceTimeout, DriverError, ProtocolError
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.pipeline import PipelinedEndpoint
from drivers.template import ModbusTemplate
from tests.modbus_faulty_server import FaultyServer, each, exception, good, register
from tests.waiting import WAIT_S, until, until_async

# one holding block (0+3): one request per read
ONE = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "uint32"},
    "f_hz": {"address": 2, "type": "uint16"}})
# a holding and an input block: two requests per read, sent together
TWO = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "uint32"},
    "f_hz": {"address": 0, "function": "input", "type": "uint16"}})
DELAY_S, DELAY_MAX_S = 0.05, 0.4


@pytest.fixture(params=[4, 1], ids=["window4", "window1"])
def window(request: pytest.FixtureRequest) -> int:
    """max_in_flight: pipelined, and 1 (the default of every modbus_tcp connection)."""
    return int(request.param)


def one_values(unit: int) -> dict[str, float]:
    return {"p_kw": register(unit, 0) * 65536 + register(unit, 1),
            "f_hz": register(unit, 2)}


def two_values(unit: int) -> dict[str, float]:
    return {"p_kw": register(unit, 0) * 65536 + register(unit, 1),
            "f_hz": register(unit, 0)}


async def bounded(*aws: Any) -> list[Any]:
    """Every awaitable's result or exception; fails the test if any of them hangs."""
    return await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), WAIT_S)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def _close(frames: list[bytes]) -> None:
    return None  # hang up at once, answer nothing


def _http(frames: list[bytes]) -> bytes:
    return b"HTTP/1.1 400 Bad Request\r\n\r\n"


def _bad_function(frame: bytes) -> bytes:
    return frame[:4] + b"\x00\x03" + frame[6:7] + b"\x55\x00"


def _wrong_tid(frame: bytes) -> bytes:
    return b"\x7f\x7f" + good(frame)[2:]


def _wrong_unit(frame: bytes) -> bytes:
    out = good(frame)
    return out[:6] + bytes([out[6] ^ 0x40]) + out[7:]


@pytest.mark.parametrize("answer, first_backoff, why", [
    (_close, 0, r"connection lost"),
    (_http, 1, r"not a Modbus TCP frame \(protocol id 0x5450\)"),
    (each(_bad_function), 1, r"function code 85 in the answer to function 3"),
    (each(_wrong_tid), 1, r"transaction 32639, which is not in flight"),
    (each(_wrong_unit), 1, r"answer from unit 65, asked unit 1")],
    ids=["accept-then-close", "not-modbus", "bad-function-code", "wrong-transaction-id",
         "wrong-unit"])
async def test_misbehaving_server_backs_off_logs_once_and_recovers(
        caplog: pytest.LogCaptureFixture, answer: Callable[[list[bytes]], bytes | None],
        first_backoff: int, why: str, window: int) -> None:
    caplog.set_level(logging.INFO)
    server = await FaultyServer(answer).start()
    drv = ModbusDriver()
    io = drv.attach(config_device("meter1"), ONE,
                    server.conn(max_in_flight=window, timeout_s=10.0,
                                reconnect_delay_s=DELAY_S,
                                reconnect_delay_max_s=DELAY_MAX_S))
    ep = drv.endpoint(io.endpoint)
    assert isinstance(ep, PipelinedEndpoint)
    errors: list[str] = []

    async def poll() -> None:  # as a poller would, every 10 ms, each read failing
        while True:
            with pytest.raises(DriverError) as err:
                await io.read()
            errors.append(str(err.value))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(poll())
    try:
        attempts = 7
        await until(lambda: len(server.accepts) >= attempts or task.done(),
                    f"{attempts} connection attempts")
        if task.done():
            task.result()  # a read that did not fail: re-raise its assertion
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    try:
        times = server.accepts[:attempts]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Garbage is retried at once the first time (line noise); from then on, and from
        # the first hang-up, each connect waits twice as long as the one before, up to
        # the cap: connecting is not a good answer and resets nothing.
        floors = [0.0] * first_backoff + [min(DELAY_S * 2 ** i, DELAY_MAX_S)
                                          for i in range(attempts - 1 - first_backoff)]
        assert all(gap >= floor for gap, floor in zip(gaps, floors, strict=True)), \
            list(zip(gaps, floors, strict=True))
        assert any(re.search(why, e) for e in errors), errors[:3]
        no_tracebacks(caplog)
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1, [r.getMessage() for r in loud]
        assert re.fullmatch(rf"tcp://127\.0\.0\.1:{server.port}: .+; retrying with backoff",
                            loud[0].getMessage())

        server.answer = each(good)  # the device is fixed
        got: dict[str, object] = {}

        async def read_ok() -> bool:
            try:
                got.update(await io.read())
            except DriverError:
                return False
            return True

        await until_async(read_ok, "a good read from the mended server")
        assert got == pytest.approx(one_values(1))
        infos = [r.getMessage() for r in caplog.records if "recover" in r.getMessage()]
        assert len(infos) == 1, infos
        assert re.fullmatch(rf"tcp://127\.0\.0\.1:{server.port}: recovered after \d+\.\d s"
                            rf" / {len(server.accepts) - 1} attempts", infos[0])
        assert ep.backoff_s == DELAY_S  # the good answer reset the backoff
    finally:
        await drv.close()
        await server.stop()


async def test_answers_in_any_order_go_to_their_own_requests() -> None:
    # a gateway in front of several units answers whichever unit is quickest first
    server = FaultyServer(lambda frames: b"".join(good(f) for f in reversed(frames)))
    await server.start()
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), TWO, server.conn(max_in_flight=8))
           for u in range(1, 5)]
    try:
        results = await bounded(*(io.read() for io in ios))
        assert results == [pytest.approx(two_values(u)) for u in range(1, 5)]
        assert len(server.accepts) == 1
    finally:
        await drv.close()
        await server.stop()


async def test_a_server_that_half_answers_never_strands_the_reads_queued_behind(
        caplog: pytest.LogCaptureFixture) -> None:
    # Like pymodbus' own server: the first request of each chunk received is answered,
    # the rest dropped. The link falls back to one request at a time; a read that was
    # queued for two slots of the old window must still get its turn, not wait forever.
    server = await FaultyServer(lambda frames: good(frames[0])).start()
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), TWO,
                      server.conn(max_in_flight=4, timeout_s=0.3)) for u in range(1, 4)]
    try:
        first = await bounded(*(io.read() for io in ios))
        assert all(isinstance(r, dict | DriverError) for r in first), first
        assert any(isinstance(r, DeviceTimeout) for r in first), first
        assert caplog.text.count("one at a time from now on") == 1  # logged once
        assert ios[0].pipeline_window == 1
        again = await bounded(*(io.read() for io in ios))
        assert again == [pytest.approx(two_values(u)) for u in range(1, 4)]
    finally:
        await drv.close()
        await server.stop()


async def test_a_server_that_stops_answering_mid_pipeline_ends_every_read(
        window: int) -> None:
    answered = {"n": 0}

    def answer(frames: list[bytes]) -> bytes:
        out = b""
        for frame in frames:
            if answered["n"] < 3:  # three answers, then silence on an open connection
                answered["n"] += 1
                out += good(frame)
        return out

    server = await FaultyServer(answer).start()
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), ONE,
                      server.conn(max_in_flight=window, timeout_s=0.3)) for u in range(1, 9)]
    try:
        results = await bounded(*(io.read() for io in ios))
        good_reads = [r for r in results if isinstance(r, dict)]
        failed = [r for r in results if isinstance(r, DriverError)]
        assert len(good_reads) + len(failed) == len(ios), results
        assert len(good_reads) == 3 and failed
        assert any(isinstance(r, DeviceTimeout) for r in failed), failed
        assert all(isinstance(r, DeviceTimeout | DeviceOffline) for r in failed), failed
        answered["n"] = -100  # the server answers again: every device reads, reconnected
        accepts = len(server.accepts)
        again = await bounded(*(io.read() for io in ios))
        assert again == [pytest.approx(one_values(u)) for u in range(1, 9)]
        assert len(server.accepts) > accepts
    finally:
        await drv.close()
        await server.stop()


async def test_a_hang_up_with_requests_in_flight_fails_them_all_and_backs_off(
        caplog: pytest.LogCaptureFixture, window: int) -> None:
    server = await FaultyServer(lambda frames: b"").start()  # holds every request
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), TWO,
                      server.conn(max_in_flight=8 if window > 1 else 1, timeout_s=10.0,
                                  reconnect_delay_s=30.0))
           for u in range(1, 4)]
    try:
        reads = [asyncio.create_task(io.read()) for io in ios]
        # window 8: all six requests on the wire; window 1: the first (its answer held)
        on_wire = 6 if window > 1 else 1
        await until(lambda: len(server.frames) == on_wire, "the window's requests on the wire")
        server.hang_up()
        results = await bounded(*reads)
        assert all(isinstance(r, DeviceOffline) for r in results), results
        # on the wire: "connection to ... lost"; queued behind the window (window 1): the
        # outage and the backoff, without a connect attempt
        assert "connection to" in str(results[0]) and "lost" in str(results[0]), results
        assert all("lost" in str(r) for r in results), results
        with pytest.raises(DeviceOffline, match=r"next reconnect in (29|30)\.\d\d s"):
            await ios[0].read()  # backing off: no new connection, no wait
        assert len(server.accepts) == 1
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1 and "connection lost" in loud[0].getMessage(), loud
        no_tracebacks(caplog)
    finally:
        await drv.close()
        await server.stop()


@pytest.mark.parametrize("then_close", [False, True], ids=["then-silence", "then-close"])
async def test_a_truncated_frame_ends_the_read_and_the_next_one_reconnects(
        then_close: bool, window: int) -> None:
    cut = {"on": True}

    def answer(frames: list[bytes]) -> bytes:
        if not cut["on"]:
            return b"".join(good(f) for f in frames)
        cut["on"] = False
        server.close_after_answer = then_close
        return good(frames[0])[:10]  # the MBAP header says 9 more bytes follow

    server = await FaultyServer(answer).start()
    drv = ModbusDriver()
    io = drv.attach(config_device(), ONE, server.conn(max_in_flight=window, timeout_s=0.3,
                                                      reconnect_delay_s=0.01))
    try:
        expected = DeviceOffline if then_close else DeviceTimeout
        (result,) = await bounded(io.read())
        assert isinstance(result, expected), result

        async def read_ok() -> bool:
            try:
                return await io.read() == pytest.approx(one_values(1))
            except DeviceOffline:  # still backing off after the hang-up
                return False

        await until_async(read_ok, "a good read after the cut frame")
        assert len(server.accepts) == 2  # the rest of the cut frame can never be misread
    finally:
        await drv.close()
        await server.stop()


async def test_a_frame_shorter_than_its_byte_count_is_a_short_response(window: int) -> None:
    short = {"on": True}

    def answer(frame: bytes) -> bytes:
        out = good(frame)
        if short["on"]:  # byte count 6, two registers carried, MBAP length consistent
            out = out[:4] + (len(out) - 6 - 2).to_bytes(2, "big") + out[6:-2]
        return out

    server = await FaultyServer(each(answer)).start()
    drv = ModbusDriver()
    io = drv.attach(config_device(), ONE, server.conn(max_in_flight=window))
    try:
        with pytest.raises(ProtocolError) as err:
            await io.read()
        assert str(err.value) == (f"short response: 2 of 3 registers reading holding 0+3 "
                                  f"from dev1 (unit 1) on tcp://127.0.0.1:{server.port}")
        short["on"] = False
        assert await io.read() == pytest.approx(one_values(1))
        assert len(server.accepts) == 1  # the framing held: the link is kept
    finally:
        await drv.close()
        await server.stop()


async def test_an_exception_answer_fails_its_read_only_and_keeps_the_link(
        caplog: pytest.LogCaptureFixture, window: int) -> None:
    busy = {"unit": 2}

    def answer(frame: bytes) -> bytes:
        if frame[6] == busy["unit"] and frame[7] == 4:
            return exception(frame, 6)  # SERVER DEVICE BUSY on the input block
        return good(frame)

    server = await FaultyServer(each(answer)).start()
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), TWO,
                      server.conn(max_in_flight=8 if window > 1 else 1)) for u in range(1, 4)]
    try:
        results = await bounded(*(io.read() for io in ios))
        assert results[0] == pytest.approx(two_values(1))
        assert results[2] == pytest.approx(two_values(3))
        assert isinstance(results[1], ProtocolError)
        assert str(results[1]) == "SERVER DEVICE BUSY (6) reading input 0+1 from m2 (unit 2)"
        busy["unit"] = 0
        assert await ios[1].read() == pytest.approx(two_values(2))
        assert len(server.accepts) == 1  # an exception answer is a healthy link
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await drv.close()
        await server.stop()


async def test_close_with_reads_queued_for_the_window_opens_no_new_connection(
        window: int) -> None:
    server = await FaultyServer(lambda frames: b"").start()  # holds every request
    drv = ModbusDriver()
    ios = [drv.attach(config_device(f"m{u}", unit=u), ONE,
                      server.conn(max_in_flight=min(window, 2), timeout_s=10.0))
           for u in range(1, 6)]
    reads = [asyncio.create_task(io.read()) for io in ios]
    try:
        await until(lambda: len(server.frames) == min(window, 2), "the window full")
        await drv.close()
        results = await bounded(*reads)
        assert all(isinstance(r, DeviceOffline) for r in results), results
        assert len(server.accepts) == 1
    finally:
        await drv.close()
        await server.stop()
