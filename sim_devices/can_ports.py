"""How the simulated CAN nodes reach the gateway: a simulated slcan adapter on a
pseudo-terminal (no root, no network), or a python-can bus (virtual in one process;
udp_multicast only once loopback carries the group; socketcan on vcan).

``SlcanPty`` plays a USB-CAN adapter plugged into the simulated bus: the gateway opens
``channel`` (a symlink to the pty the simulator made) with ``interface: slcan`` and speaks
the slcan ASCII protocol (``O``/``C``/``S6``, ``t``/``T`` frames). Frames never touch a
network interface, so simulation traffic cannot leave the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path

from drivers.can.connection import CanConnection
from drivers.can.dbc import Payload
from drivers.can.link import CanLink, frame_key

log = logging.getLogger(__name__)

Handler = Callable[[Payload, float], None]


class SlcanPty:
    """A simulated slcan adapter on a pty, reachable at the symlink ``link_path``."""

    def __init__(self, link_path: str | Path) -> None:
        self.link_path = Path(link_path)
        self.handlers: dict[int, Handler] = {}
        self.adapter_open = False  # the gateway sent "O" (frames flow only then)
        self.sent = 0
        self.dropped = 0
        self.bad_commands = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._buf = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def up(self) -> bool:
        return self._master is not None

    def subscribe(self, key: int, handler: Handler) -> None:
        self.handlers[key] = handler

    async def start(self) -> None:
        if self._master is not None:
            return
        link = self.link_path
        if link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a pty link made by the "
                                  f"simulator; choose another CAN channel path")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: the adapter speaks bytes
        os.set_blocking(master, False)
        tmp = link.with_name(link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, link)
        self._master, self._slave = master, slave
        self._buf = b""
        self.adapter_open = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master, self._readable)
        log.info("simulated slcan adapter on %s -> %s", link, os.ttyname(slave))

    async def stop(self) -> None:
        """Unplug the adapter: the gateway's port reports an I/O error and the link goes."""
        master, slave = self._master, self._slave
        self._master = self._slave = None
        self.adapter_open = False
        if master is not None:
            if self._loop is not None:
                self._loop.remove_reader(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        if self.link_path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()

    # -- from the gateway -------------------------------------------------------------

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody has the port open right now
            return
        self._buf += data
        while b"\r" in self._buf:
            line, _, self._buf = self._buf.partition(b"\r")
            self._command(line)
        if len(self._buf) > 4096:  # no terminator in sight: garbage
            self._buf = b""
            self.bad_commands += 1

    def _command(self, line: bytes) -> None:
        if not line:
            return
        c = line[:1]
        if c in (b"O", b"L"):
            self.adapter_open = True
            if self._slave is not None:  # frames queued while closed are not news
                termios.tcflush(self._slave, termios.TCIFLUSH)
            self._reply(b"\r")
        elif c == b"C":
            self.adapter_open = False
            self._reply(b"\r")
        elif c in (b"S", b"s", b"F", b"Z", b"M", b"m", b"X", b"W", b"Y"):
            self._reply(b"\r")
        elif c == b"V":
            self._reply(b"V1013\r")
        elif c == b"v":
            self._reply(b"v1013\r")
        elif c == b"N":
            self._reply(b"NSIM0\r")
        elif c in (b"t", b"T"):
            frame = parse_frame(line)
            if frame is None:
                self.bad_commands += 1
                self._reply(b"\a")
                return
            arb, data, ext = frame
            handler = self.handlers.get(frame_key(arb, ext))
            if handler is not None and self.adapter_open:
                handler(data, 0.0)
            self._reply(b"Z\r" if ext else b"z\r")
        else:
            self.bad_commands += 1
            self._reply(b"\a")

    def _reply(self, data: bytes) -> None:
        self.write_raw(data)

    # -- to the gateway ---------------------------------------------------------------

    def write_raw(self, data: bytes) -> bool:
        """Bytes to the gateway as the adapter would send them (False: dropped)."""
        if self._master is None:
            return False
        try:
            os.write(self._master, data)
        except OSError:  # buffer full (nobody reading) or hung up: the bus drops it
            self.dropped += 1
            return False
        return True

    async def send(self, arbitration_id: int, data: bytes, extended: bool) -> bool:
        if not self.adapter_open:
            return False
        ok = self.write_raw(format_frame(arbitration_id, data, extended))
        self.sent += ok
        return ok


def format_frame(arbitration_id: int, data: bytes, extended: bool) -> bytes:
    head = f"T{arbitration_id:08X}" if extended else f"t{arbitration_id:03X}"
    return f"{head}{len(data)}{data.hex().upper()}\r".encode()


def parse_frame(line: bytes) -> tuple[int, bytes, bool] | None:
    """An slcan ``t``/``T`` line (without the CR) as (id, data, extended); None if bad."""
    ext = line[:1] == b"T"
    n = 8 if ext else 3
    try:
        arb = int(line[1:1 + n], 16)
        dlc = int(line[1 + n:2 + n])
        hexdata = line[2 + n:].decode("ascii")
        data = bytes.fromhex(hexdata)
    except (ValueError, UnicodeDecodeError):
        return None
    if len(line) < 2 + n or dlc > 8 or len(data) != dlc or arb > (0x1FFFFFFF if ext else 0x7FF):
        return None
    return arb, data, ext


class BusPort:
    """The simulated nodes on a python-can bus (virtual, udp_multicast, socketcan),
    through the gateway's own link code (reader thread, loopback route check)."""

    def __init__(self, conn: CanConnection) -> None:
        self.conn = conn
        self.handlers: dict[int, Handler] = {}
        self.link: CanLink | None = None
        self.sent = 0
        self.adapter_open = True

    @property
    def up(self) -> bool:
        return self.link is not None and self.link.up

    def subscribe(self, key: int, handler: Handler) -> None:
        self.handlers[key] = handler
        if self.link is not None:
            self.link.subscribe(key, handler)

    async def start(self) -> None:
        if self.link is None:
            link = CanLink(self.conn)
            for key, handler in self.handlers.items():
                link.subscribe(key, handler)
            self.link = link
        await self.link.ensure_open()

    async def stop(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()

    async def send(self, arbitration_id: int, data: bytes, extended: bool) -> bool:
        if self.link is None or not self.link.up:
            return False
        await self.link.send(arbitration_id, data, extended)
        self.sent += 1
        return True

    def write_raw(self, data: bytes) -> bool:
        return False  # a python-can bus carries whole frames only


Port = SlcanPty | BusPort


def make_port(conn: CanConnection) -> Port:
    if conn.interface == "slcan":
        return SlcanPty(conn.channel)
    return BusPort(conn)
