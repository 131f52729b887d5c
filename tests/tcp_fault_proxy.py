"""A TCP proxy for tests whose fault can be switched while it runs.

It listens on 127.0.0.1 (port 0: the kernel picks) and forwards to one target. Modes:

- ``pass``: forward both ways as it comes.
- ``drop``: close every connection, open ones at once and new ones as they are accepted
  (what a crashed peer or a firewall reset looks like).
- ``delay``: forward both ways, each chunk ``delay_ms`` after it was read (order kept).
- ``black-hole``: accept and read, never forward, never answer, never close (a cable cut
  or a silently dropping firewall; only the client's own timeouts notice).

Switching affects open connections too. A connection accepted while in black-hole mode
opens its upstream connection only once a mode forwards again; the bytes swallowed in the
meantime are gone, as on a real network. ``stats`` counts what happened, so tests wait on
conditions instead of sleeping.

    async with TcpFaultProxy("127.0.0.1", member_port) as proxy:
        client = connect("127.0.0.1", proxy.port)
        proxy.set_mode("black-hole")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["pass", "drop", "delay", "black-hole"]
MODES: tuple[Mode, ...] = ("pass", "drop", "delay", "black-hole")
CHUNK = 65536


@dataclass
class Stats:
    accepted: int = 0  # connections accepted from clients
    upstream_opened: int = 0  # connections opened to the target
    dropped: int = 0  # connections closed by drop mode
    read_up: int = 0  # bytes read from clients (whatever then happened to them)
    read_down: int = 0  # bytes read from the target
    forwarded_up: int = 0  # bytes client -> target
    forwarded_down: int = 0  # bytes target -> client
    swallowed: int = 0  # bytes read in black-hole mode and thrown away


_EOF = None  # the queue item that ends a direction


class _Link:
    """One client connection and (once needed) its upstream connection."""

    def __init__(self, proxy: TcpFaultProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._upstream_lock = asyncio.Lock()
        self.to_up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.to_down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        self._spawn(self._pump(self.client[0], self.to_up, up=True), "proxy-read-client")
        self._spawn(self._send(self.to_up, up=True), "proxy-send-up")
        self._spawn(self._send(self.to_down, up=False), "proxy-send-down")
        if self.proxy.mode in ("pass", "delay"):
            await self._ensure_upstream()
        await self.closed.wait()

    async def _ensure_upstream(self) -> asyncio.StreamWriter | None:
        async with self._upstream_lock:
            if self.upstream is None and not self.closed.is_set():
                try:
                    self.upstream = await asyncio.open_connection(*self.proxy.target)
                except OSError:
                    self.close()
                    return None
                self.proxy.stats.upstream_opened += 1
                self._spawn(self._pump(self.upstream[0], self.to_down, up=False),
                            "proxy-read-target")
        return self.upstream[1] if self.upstream is not None else None

    async def _pump(self, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes] | None], *, up: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(CHUNK):
                if up:
                    self.proxy.stats.read_up += len(data)
                else:
                    self.proxy.stats.read_down += len(data)
                mode = self.proxy.mode
                if mode == "black-hole":
                    self.proxy.stats.swallowed += len(data)
                elif mode == "drop":
                    break
                else:
                    delay_s = self.proxy.delay_ms / 1000 if mode == "delay" else 0.0
                    queue.put_nowait((loop.time() + delay_s, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(_EOF)

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes] | None], *,
                    up: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not _EOF:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if self.proxy.mode in ("black-hole", "drop"):
                    self.proxy.stats.swallowed += len(data)  # switched while it waited
                    continue
                writer = await self._ensure_upstream() if up else self.client[1]
                if writer is None:
                    return
                writer.write(data)
                await writer.drain()
                if up:
                    self.proxy.stats.forwarded_up += len(data)
                else:
                    self.proxy.stats.forwarded_down += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close both sides at once (no lingering half-open connection)."""
        for pair in (self.client, self.upstream):
            if pair is not None:
                pair[1].transport.abort()
        self.closed.set()

    async def wait_closed(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class TcpFaultProxy:
    """See the module docstring."""

    def __init__(self, target_host: str, target_port: int, *, mode: Mode = "pass",
                 delay_ms: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_ms = 0.0
        self.stats = Stats()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.set_mode(mode, delay_ms=delay_ms)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    def set_mode(self, mode: Mode, *, delay_ms: float | None = None) -> None:
        """Switch the fault; ``drop`` closes every open connection now."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode '{mode}' (modes: {', '.join(MODES)})")
        if delay_ms is not None:
            if delay_ms < 0:
                raise ValueError(f"delay_ms must be >= 0, not {delay_ms}")
            self.delay_ms = delay_ms
        self.mode = mode
        if mode == "drop":
            for link in list(self._links):
                self.stats.dropped += 1
                link.close()

    async def start(self) -> TcpFaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode == "drop":
            self.stats.dropped += 1
            writer.transport.abort()
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await link.run()
        finally:
            link.close()
            await link.wait_closed()
            self._links.discard(link)
            if handler is not None:
                self._handlers.discard(handler)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpFaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
