"""A misbehaving Modbus TCP server on 127.0.0.1 for the pipelining link's tests (no tests
here): a real asyncio socket server whose answers a test scripts frame by frame.

``answer`` gets the request frames of one received chunk and returns the bytes to send
back (``b""``: nothing, the requests stay unanswered) or ``None`` to hang up. A good
answer holds ``1000 * unit + address + i`` in register ``address + i``, so the answers of
different devices and blocks cannot be mistaken for each other.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Any

from gateway.config.models import ModbusTcp

Answer = Callable[[list[bytes]], "bytes | None"]


def good(frame: bytes) -> bytes:
    """The right answer to one FC1-6 request frame."""
    tid, _, _, unit, fc, start, count = struct.unpack(">HHHBBHH", frame[:12])
    if fc in (5, 6):
        pdu = frame[7:12]  # a write is answered by its echo
    elif fc in (1, 2):
        nbytes = (count + 7) // 8
        pdu = struct.pack(">BB", fc, nbytes) + b"\xff" * nbytes
    else:
        pdu = struct.pack(f">BB{count}H", fc, 2 * count,
                          *[(1000 * unit + start + i) & 0xFFFF for i in range(count)])
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def exception(frame: bytes, code: int) -> bytes:
    """A Modbus exception answer with ``code`` to one request frame."""
    tid, _, _, unit, fc = struct.unpack(">HHHBB", frame[:8])
    return struct.pack(">HHHBBB", tid, 0, 3, unit, fc | 0x80, code)


def each(per_frame: Callable[[bytes], bytes]) -> Answer:
    """Answer every frame of a chunk with ``per_frame(frame)``."""
    return lambda frames: b"".join(per_frame(f) for f in frames)


def register(unit: int, address: int) -> int:
    """The value a good answer holds in ``address`` for ``unit``."""
    return (1000 * unit + address) & 0xFFFF


class FaultyServer:
    """Accepts Modbus TCP connections and answers as ``answer`` says."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or each(good)
        self.accepts: list[float] = []  # monotonic time of each accepted connection
        self.frames: list[bytes] = []  # every request frame received
        self.close_after_answer = False  # hang up once the next answer is written
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FaultyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def conn(self, **kw: Any) -> ModbusTcp:
        kw.setdefault("max_in_flight", 4)
        return ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1", port=self.port,
                         **kw)

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.accepts.append(time.monotonic())
        self._writers.add(writer)
        buf = b""
        try:
            while data := await reader.read(65536):
                buf += data
                frames: list[bytes] = []
                while len(buf) >= 6 and len(buf) >= 6 + struct.unpack(">H", buf[4:6])[0]:
                    end = 6 + struct.unpack(">H", buf[4:6])[0]
                    frames.append(buf[:end])
                    buf = buf[end:]
                if not frames:
                    continue
                self.frames.extend(frames)
                out = self.answer(frames)
                if out is None:
                    break
                if out:
                    writer.write(out)
                    await writer.drain()
                if self.close_after_answer:
                    self.close_after_answer = False
                    break
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def hang_up(self) -> None:
        """Close every open connection now."""
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self.hang_up()
        await self._server.wait_closed()
        self._server = None
