"""The test TCP fault proxy does what each mode says, against a real echo server on
loopback that counts what reached it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from tests.tcp_fault_proxy import TcpFaultProxy

BOUND_S = 10.0  # every wait on a condition gives up after this


@dataclass
class Echo:
    """An echo server that counts connections and bytes received."""

    server: asyncio.Server | None = None
    connections: int = 0
    received: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(4096):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    e.server = await asyncio.start_server(e._serve, "127.0.0.1", 0)
    yield e
    e.server.close()
    for w in e.writers:
        w.transport.abort()
    await e.server.wait_closed()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[TcpFaultProxy]:
    async with TcpFaultProxy("127.0.0.1", echo.port) as p:
        yield p


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {BOUND_S} s: {what}")
        await asyncio.sleep(0.01)


async def _open(proxy: TcpFaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), BOUND_S)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def test_pass_forwards_both_ways(proxy: TcpFaultProxy, echo: Echo) -> None:
    reader, writer = await _open(proxy)
    payload = bytes(range(256)) * 1000  # several chunks
    assert await _roundtrip(reader, writer, payload) == payload
    assert echo.received == len(payload)
    assert proxy.stats.forwarded_up == proxy.stats.forwarded_down == len(payload)
    await _close(writer)


async def test_delay_holds_each_direction_and_keeps_order(proxy: TcpFaultProxy,
                                                          echo: Echo) -> None:
    reader, writer = await _open(proxy)
    assert await _roundtrip(reader, writer, b"warm") == b"warm"
    proxy.set_mode("delay", delay_ms=150)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await _roundtrip(reader, writer, b"slow") == b"slow"
    assert loop.time() - start >= 2 * 0.150  # held once on the way up, once down
    # chunks sent in delay mode, then pass: the later, undelayed ones wait their turn
    writer.write(b"first,")
    await writer.drain()
    await until(lambda: proxy.stats.read_up == 14, "the proxy holds 'first,'")
    proxy.set_mode("pass")
    writer.write(b"second")
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(12), BOUND_S)
    assert got == b"first,second"
    await _close(writer)


async def test_drop_closes_open_and_new_connections(proxy: TcpFaultProxy, echo: Echo) -> None:
    reader, writer = await _open(proxy)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    proxy.set_mode("drop")
    assert await asyncio.wait_for(reader.read(), BOUND_S) == b""  # closed under us
    reader2, writer2 = await _open(proxy)  # the kernel accepts; the proxy closes it
    assert await asyncio.wait_for(reader2.read(), BOUND_S) == b""
    assert proxy.stats.dropped == 2 and echo.connections == 1
    await _close(writer)
    await _close(writer2)
    proxy.set_mode("pass")
    reader3, writer3 = await _open(proxy)
    assert await _roundtrip(reader3, writer3, b"back") == b"back"
    assert echo.connections == 2
    await _close(writer3)


async def test_black_hole_reads_and_never_forwards_answers_or_closes(
        proxy: TcpFaultProxy, echo: Echo) -> None:
    reader, writer = await _open(proxy)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    proxy.set_mode("black-hole")
    writer.write(b"x" * 100)
    await writer.drain()
    reader2, writer2 = await _open(proxy)  # accepted in black-hole mode: no upstream
    writer2.write(b"y" * 50)
    await writer2.drain()
    await until(lambda: proxy.stats.swallowed == 150, "150 bytes swallowed")
    assert echo.received == 5 and echo.connections == 1  # nothing reached the target
    assert proxy.stats.upstream_opened == 1
    assert not reader.at_eof() and not reader2.at_eof()  # nobody closed them
    assert proxy.stats.forwarded_down == 5  # nothing came back either
    proxy.set_mode("pass")  # both connections carry on; the swallowed bytes are gone
    assert await _roundtrip(reader, writer, b"again") == b"again"
    assert await _roundtrip(reader2, writer2, b"late") == b"late"
    assert echo.connections == 2 and echo.received == 5 + 5 + 4
    await _close(writer)
    await _close(writer2)


async def test_unknown_mode_is_refused(proxy: TcpFaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown proxy mode 'cut'"):
        proxy.set_mode("cut")  # type: ignore[arg-type]
    assert proxy.mode == "pass"
