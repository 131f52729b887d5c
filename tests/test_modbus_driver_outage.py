"""Modbus outages against misbehaving TCP servers on 127.0.0.1: a server that accepts and
hangs up, one that answers with bytes that are not a Modbus frame. The backoff must grow
until a good answer arrives, each outage is logged once ("lost", then "recovered"), and
no traceback reaches the log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import pytest
from test_modbus_driver_support import SimServer, config_device, device_from, registers_for

from drivers.base import DriverError
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.endpoint import Client, ConnectionConfig, make_client
from drivers.template import ModbusTemplate
from gateway.config.models import ModbusTcp
from tests.waiting import until, until_async

METER = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
    "f_hz": {"address": 2, "type": "uint16", "scale": 0.01},
})
VALUES = {"p_kw": 4.5, "f_hz": 50.0}
DELAY_S, DELAY_MAX_S = 0.05, 0.4


def _not_modbus(request: bytes) -> bytes:
    return b"HTTP/1.1 400 Bad Request\r\n\r\n"  # something else listens on the port


def _bad_function(request: bytes) -> bytes:
    # a well-formed MBAP header for the right transaction, then a function code that
    # does not exist: pymodbus cannot decode it
    return request[:2] + b"\x00\x00\x00\x03" + request[6:7] + b"\x55\x00"


class BadServer:
    """A real asyncio TCP server on loopback that accepts, then answers every request with
    ``reply(request)``; without ``reply`` it hangs up at once, before any request."""

    def __init__(self, reply: Callable[[bytes], bytes] | None) -> None:
        self.reply = reply
        self.accepts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> BadServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self._writers.add(writer)
        try:
            while self.reply is not None and (data := await reader.read(260)):
                writer.write(self.reply(data))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None


class TimedFactory:
    """Records when the driver opens each connection (one pymodbus client per attempt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, conn: ConnectionConfig, name: str) -> Client:
        self.times.append(time.monotonic())
        return make_client(conn, name)


async def _poll_until(io: object, pred: Callable[[], bool], what: str) -> None:
    """Read as a poller would (every 10 ms), each read failing, until ``pred()``."""
    async def poll() -> None:
        while True:
            with pytest.raises(DriverError):
                await io.read()  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

    task = asyncio.create_task(poll())
    try:
        await until(lambda: pred() or task.done(), what)
        if task.done():
            task.result()  # a read that did not fail: re-raise its assertion
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("reply, first_backoff", [
    (None, 0), (_not_modbus, 1), (_bad_function, 1)],
    ids=["accept-then-close", "not-modbus", "bad-function-code"])
async def test_misbehaving_server_backs_off_logs_once_and_recovers(
        caplog: pytest.LogCaptureFixture, reply: Callable[[bytes], bytes] | None,
        first_backoff: int) -> None:
    caplog.set_level(logging.INFO)
    bad = await BadServer(reply).start()
    factory = TimedFactory()
    drv = ModbusDriver(client_factory=factory)
    conn = ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1", port=bad.port,
                     timeout_s=10.0, reconnect_delay_s=DELAY_S,
                     reconnect_delay_max_s=DELAY_MAX_S)
    io = drv.attach(config_device("meter1"), METER, conn)
    good: SimServer | None = None
    try:
        attempts = 7
        await _poll_until(io, lambda: len(factory.times) >= attempts,
                          f"{attempts} connection attempts")
        gaps = [b - a for a, b in zip(factory.times, factory.times[1:], strict=False)]
        # A garbled answer is retried at once the first time (line noise); from then on,
        # and from the first hang-up, every attempt waits twice as long, up to the cap.
        floors = [0.0] * first_backoff + [min(DELAY_S * 2 ** i, DELAY_MAX_S)
                                          for i in range(attempts - 1 - first_backoff)]
        assert all(gap >= floor for gap, floor in zip(gaps, floors, strict=True)), \
            list(zip(gaps, floors, strict=True))
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1, [r.getMessage() for r in loud]
        assert loud[0].name == "drivers.modbus"
        assert re.fullmatch(rf"tcp://127\.0\.0\.1:{bad.port}: .+; retrying with backoff",
                            loud[0].getMessage())

        port = bad.port
        await bad.stop()
        good = await SimServer([device_from(1, registers_for(METER, VALUES))]).start(port)
        recovered: dict[str, object] = {}

        async def read_ok() -> bool:
            try:
                recovered.update(await io.read())
            except DriverError:
                return False
            return True

        await until_async(read_ok, "a good read from the restored server")
        assert recovered == pytest.approx(VALUES)
        # the outage began after the first connect; every attempt since is counted
        infos = [r.getMessage() for r in caplog.records if "recover" in r.getMessage()]
        assert len(infos) == 1, infos
        assert re.fullmatch(rf"tcp://127\.0\.0\.1:{port}: recovered after \d+\.\d s / "
                            rf"{len(factory.times) - 1} attempts", infos[0])
        assert not [r for r in caplog.records if "connected again" in r.getMessage()]
        # a good answer resets the backoff: the next failure waits the first delay again
        ep = drv.endpoint(io.endpoint)
        assert ep is not None and ep.backoff_s == DELAY_S
    finally:
        await drv.close()
        await bad.stop()
        if good is not None:
            await good.stop()
