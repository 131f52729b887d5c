"""A DNP3 fault proxy for tests: an asyncio TCP proxy on 127.0.0.1 between a master and
a real outstation (sim_devices/dnp3_server.py) that parses the link frames both ways,
records the master's requests, and rewrites the outstation's frames on demand: IIN bits
set until the master does what they ask, command statuses replaced, CRCs corrupted,
frames cut short, unsolicited responses injected. Every frame it changes gets its
CRC-16/DNP block CRCs recomputed (dnp3py's DataLinkFrame.to_bytes), unless the point is
to break them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from dnp3.application.parser import parse_request
from dnp3.core.enums import FunctionCode
from dnp3.datalink.builder import build_unconfirmed_user_data
from dnp3.datalink.frame import DataLinkFrame
from dnp3.datalink.parser import FrameParser

HOST = "127.0.0.1"
TRANSPORT_FIR, TRANSPORT_FIN = 0x40, 0x80
APP_FIR, APP_FIN, APP_CON, APP_UNS = 0x80, 0x40, 0x20, 0x10
CONTROL_FUNCTIONS = {FunctionCode.SELECT, FunctionCode.OPERATE, FunctionCode.DIRECT_OPERATE}
CONTROL_WIDTH = {(12, 1): 11, (41, 1): 5, (41, 2): 3, (41, 3): 5, (41, 4): 9}


@dataclass(frozen=True)
class Block:
    group: int
    variation: int
    qualifier: int
    data: bytes


@dataclass(frozen=True)
class Request:
    """One application request the master sent (single-fragment requests only)."""

    function: int
    seq: int
    uns: bool
    blocks: tuple[Block, ...]

    def has(self, group: int, variation: int) -> bool:
        return any(b.group == group and b.variation == variation for b in self.blocks)

    @property
    def integrity(self) -> bool:
        """A READ of class 0 (g60v1): the static part of an integrity poll."""
        return self.function == FunctionCode.READ and self.has(60, 1)

    @property
    def clears_restart(self) -> bool:
        """WRITE g80v1 qualifier 0x00 covering index 7 with the bit written 0."""
        for b in self.blocks:
            if self.function == FunctionCode.WRITE and (b.group, b.variation) == (80, 1) \
                    and b.qualifier == 0x00 and b.data[0] <= 7 <= b.data[1]:
                bit = 7 - b.data[0]
                return not (b.data[2 + bit // 8] >> (bit % 8)) & 1
        return False

    def written_time_ms(self, variation: int) -> int | None:
        """The time a WRITE g50v``variation`` carries (ms since 1970), else None."""
        if self.function != FunctionCode.WRITE:
            return None
        for b in self.blocks:
            if (b.group, b.variation) == (50, variation):
                return int.from_bytes(b.data[1:7], "little")
        return None


Until = Callable[[Request], bool]


@dataclass
class _Conn:
    master_w: asyncio.StreamWriter
    outstation_w: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Dnp3FaultProxy:
    """Listen on 127.0.0.1:0 and forward every connection to ``target_port``."""

    def __init__(self, target_port: int, *, master: int = 1, outstation: int = 10) -> None:
        self.target_port = target_port
        self.master_address, self.outstation_address = master, outstation
        self.port = 0
        self.requests: list[Request] = []
        self.iin_until: dict[int, Until] = {}  # IIN bits set on responses until ...
        self.command_status: dict[int, int] = {}  # control function -> status to answer
        self.corrupt_crc = 0  # the next N user-data frames from the outstation
        self.truncate = 0  # the next N user-data frames, cut to half
        self.uns_confirms = 0  # confirms of injected unsolicited responses (swallowed)
        self.injected = 0
        self._functions: dict[int, int] = {}  # request seq -> function
        self._injected_seqs: set[int] = set()
        self._uns_seq = 0
        self._server: asyncio.Server | None = None
        self._conns: list[_Conn] = []
        self._flood: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        await self.stop_flood()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in self._conns:
            for t in conn.tasks:
                t.cancel()
            for w in (conn.master_w, conn.outstation_w):
                w.close()
            for t in conn.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._conns.clear()

    def seen(self, pred: Callable[[Request], bool]) -> list[Request]:
        return [r for r in self.requests if pred(r)]

    # ---- unsolicited flood ----------------------------------------------------------

    def start_flood(self, *, every_s: float, index: int, raw: int) -> None:
        """Send an unsolicited response (CON set) with analog event g32v1 ``index`` =
        ``raw`` to the master every ``every_s``, on every connection, until stopped."""
        async def flood() -> None:
            while True:
                for conn in self._conns:
                    conn.master_w.write(self._unsolicited(index, raw))
                    self.injected += 1
                await asyncio.sleep(every_s)
        self._flood = asyncio.create_task(flood(), name="dnp3 proxy flood")

    async def stop_flood(self) -> None:
        task, self._flood = self._flood, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _unsolicited(self, index: int, raw: int) -> bytes:
        seq = self._uns_seq
        self._uns_seq = (seq + 1) % 16
        self._injected_seqs.add(seq)
        app = bytes([APP_FIR | APP_FIN | APP_CON | APP_UNS | seq,
                     FunctionCode.UNSOLICITED_RESPONSE, 0, 0,
                     32, 1, 0x28]) + (1).to_bytes(2, "little") + index.to_bytes(2, "little") \
            + bytes([0x01]) + raw.to_bytes(4, "little", signed=True)
        frame = build_unconfirmed_user_data(
            destination=self.master_address, source=self.outstation_address,
            dir_from_master=False, user_data=bytes([TRANSPORT_FIR | TRANSPORT_FIN]) + app)
        return frame.to_bytes()

    # ---- the two directions ---------------------------------------------------------

    async def _accept(self, master_r: asyncio.StreamReader,
                      master_w: asyncio.StreamWriter) -> None:
        try:
            out_r, out_w = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            master_w.close()
            return
        conn = _Conn(master_w, out_w)
        conn.tasks = [
            asyncio.create_task(self._pump(master_r, out_w, self._from_master), name="proxy m>o"),
            asyncio.create_task(self._pump(out_r, master_w, self._from_outstation),
                                name="proxy o>m")]
        self._conns.append(conn)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rewrite: Callable[[DataLinkFrame], bytes | None]) -> None:
        parser = FrameParser()
        try:
            while data := await reader.read(4096):
                for frame in parser.feed(data):
                    out = rewrite(frame)
                    if out is not None:
                        writer.write(out)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _from_master(self, frame: DataLinkFrame) -> bytes | None:
        data = frame.user_data
        if len(data) > 2 and data[0] & TRANSPORT_FIR and data[0] & TRANSPORT_FIN:
            try:
                req = parse_request(data[1:])
            except Exception:  # not ours to judge; forward it as it is
                return frame.to_bytes()
            h = req.header
            request = Request(int(h.function), h.control.seq, h.control.uns,
                              tuple(Block(b.header.group, b.header.variation,
                                          b.header.qualifier, bytes(b.data))
                                    for b in req.objects))
            if request.function == FunctionCode.CONFIRM and request.uns \
                    and request.seq in self._injected_seqs:
                self._injected_seqs.discard(request.seq)
                self.uns_confirms += 1
                return None  # the outstation never sent it; it must not see the confirm
            self.requests.append(request)
            if request.function != FunctionCode.CONFIRM:
                self._functions[request.seq] = request.function
            for bits, until in list(self.iin_until.items()):
                if until(request):
                    del self.iin_until[bits]
        return frame.to_bytes()

    def _from_outstation(self, frame: DataLinkFrame) -> bytes | None:
        data = bytearray(frame.user_data)
        if not data:
            return frame.to_bytes()  # link layer (ACK): untouched
        if data[0] & TRANSPORT_FIR and len(data) >= 5:
            app = memoryview(data)[1:]
            for bits in self.iin_until:
                app[2] |= bits & 0xFF
                app[3] |= bits >> 8
            function = self._functions.get(app[0] & 0x0F)
            if function in self.command_status and not app[0] & APP_UNS \
                    and data[0] & TRANSPORT_FIN:
                _set_statuses(app, self.command_status[function])
        out = DataLinkFrame(header=frame.header, user_data=bytes(data)).to_bytes()
        if self.corrupt_crc > 0:
            self.corrupt_crc -= 1
            return out[:-1] + bytes([out[-1] ^ 0xFF])  # the last data block's CRC
        if self.truncate > 0:
            self.truncate -= 1
            return out[:max(11, len(out) // 2)]
        return out


def _set_statuses(app: memoryview, status: int) -> None:
    """Put ``status`` on every control object echoed in a response fragment (4-byte
    header, then blocks with qualifier 0x17 or 0x28)."""
    pos = 4
    while pos + 3 <= len(app):
        group, variation, qualifier = app[pos], app[pos + 1], app[pos + 2]
        width = CONTROL_WIDTH.get((group, variation))
        sizes = {0x17: 1, 0x28: 2}.get(qualifier)
        if width is None or sizes is None:
            return
        count = int.from_bytes(app[pos + 3:pos + 3 + sizes], "little")
        pos += 3 + sizes
        for _ in range(count):
            end = pos + sizes + width
            if end > len(app):
                return
            app[end - 1] = status
            pos = end
