"""One CAN bus as the gateway sees it: a python-can bus, a reader thread, one reconnect
task, and frame dispatch to the devices listening on each frame id.

python-can buses block in ``recv``, so one thread per bus reads and hands frames to the
event loop in batches (one wake-up per burst, not per frame). Frames of ids no device
listens to are dropped as early as the interface allows and counted per id: in the
kernel for socketcan (``can_filters``), before any parsing for slcan (drivers.can.slcan
reads the adapter in bulk), at dispatch otherwise. Only this module knows the
bus: devices see ``subscribe``/``send`` and a link state. A lost bus (adapter unplugged,
the simulator's pty closed) is reopened by one task named "can reconnect ..." with a
doubling, capped delay. Malformed input (a garbled slcan line, an error frame) is counted
and survived; it never ends the reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import can

from drivers.base import DeviceOffline, DriverError, IOStats
from drivers.can.connection import CanConnection
from drivers.can.dbc import Payload
from drivers.can.slcan import SlcanParser, chunk_reader, frame_prefixes
from gateway.aio import cancel_and_wait

log = logging.getLogger("drivers.can")

FrameHandler = Callable[[Payload, float], None]  # payload, monotonic receive time
EXTENDED = 1 << 31  # key bit for 29-bit ids (cantools keeps the flag apart from the id)
RECV_POLL_S = 0.05  # reader thread wakes this often to notice a stop
COALESCE_S = 0.002  # after a small read, let a burst gather: fewer wake-ups under a flood
COALESCE_BELOW = 1024  # bytes; a read this short is followed by the pause above
DRAIN_MAX = 512  # frames taken from a python-can bus per wake-up
KERNEL_FILTERS = frozenset({"socketcan"})  # interfaces that apply can_filters below Python
Frame = tuple[int, Payload]  # frame key, payload


class CanLinkError(DriverError):
    """The bus cannot be opened (missing interface, refused route) or was lost."""


def frame_key(arbitration_id: int, extended: bool) -> int:
    return arbitration_id | EXTENDED if extended else arbitration_id


def link_key(conn: CanConnection) -> str:
    return f"can:{conn.interface}:{conn.channel}"


# ---- opening buses ---------------------------------------------------------------------

def loopback_route_problem(group: str, route_output: str | None = None,
                           lo_flags: int | None = None) -> str | None:
    """Why multicast to ``group`` would leave the machine, with the commands that fix it;
    None when loopback carries it. Both inputs are read from the system when not given."""
    try:
        addr = ipaddress.ip_address(group)
    except ValueError:
        return f"udp_multicast channel '{group}' is not an IP address"
    if not addr.is_multicast:
        return f"udp_multicast channel '{group}' is not a multicast address"
    v6 = addr.version == 6
    if lo_flags is None:
        try:
            with open("/sys/class/net/lo/flags") as f:
                lo_flags = int(f.read().strip(), 16)
        except OSError:
            lo_flags = 0
    if route_output is None:
        cmd = ["ip", "-6" if v6 else "-4", "route", "get", group]
        try:
            route_output = subprocess.run(cmd, capture_output=True, text=True, timeout=5,
                                          check=False).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            route_output = f"(cannot run {' '.join(cmd)}: {exc})"
    words = route_output.split()
    dev = words[words.index("dev") + 1] if "dev" in words[:-1] else None
    multicast_on = bool(lo_flags & 0x1000)  # IFF_MULTICAST
    if dev == "lo" and multicast_on:
        return None
    fam = "-6 " if v6 else ""
    prefix = "128" if v6 else "32"
    fix = []
    if not multicast_on:
        fix.append("sudo ip link set lo multicast on")
    if dev != "lo":
        fix.append(f"sudo ip {fam}route add {group}/{prefix} dev lo")
    where = f"through '{dev}'" if dev else "by no known route"
    return (f"refusing udp_multicast on {group}: the group is routed {where}"
            f"{'' if multicast_on else ' and lo has multicast off'}, so CAN frames could "
            f"leave this machine. Run as root: {'; '.join(fix)} (or use interface "
            f"'slcan' with the simulator's pty, which needs neither root nor network)")


def open_bus(conn: CanConnection) -> can.BusABC:
    """Open the python-can bus for ``conn`` (blocking); CanLinkError says why it cannot."""
    kwargs: dict[str, Any] = {}
    if conn.interface == "udp_multicast":
        problem = loopback_route_problem(conn.channel)
        if problem:
            raise CanLinkError(problem)
        kwargs["hop_limit"] = 0  # belt and braces: never forwarded off the host
    elif conn.interface == "slcan":
        if "://" not in conn.channel and not os.path.exists(conn.channel):
            raise CanLinkError(f"slcan port '{conn.channel}' does not exist (adapter "
                               f"unplugged, or the simulator not running?)")
        kwargs.update(bitrate=conn.bitrate, sleep_after_open=conn.open_delay_s,
                      timeout=0.02)
    elif conn.interface == "socketcan" and not os.path.exists(f"/sys/class/net/{conn.channel}"):
        raise CanLinkError(f"CAN interface '{conn.channel}' does not exist on this machine "
                           f"(see `ip link show`; for a virtual bus: `sudo ip link add dev "
                           f"{conn.channel} type vcan && sudo ip link set {conn.channel} up`)")
    try:
        return can.Bus(interface=conn.interface, channel=conn.channel, **kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise CanLinkError(f"cannot open CAN {conn.interface} '{conn.channel}': "
                           f"{exc}") from None


# ---- the link --------------------------------------------------------------------------

class CanLink:
    """A shared CAN bus: opened on first use, reopened after a loss, closed with its last
    device. ``bus_factory`` replaces ``open_bus`` (tests)."""

    def __init__(self, conn: CanConnection,
                 bus_factory: Callable[[CanConnection], can.BusABC] = open_bus) -> None:
        self.conn = conn
        self.key = link_key(conn)
        self.stats = IOStats()
        self.frames = self.malformed = self.error_frames = 0
        self._dropped: dict[int, int] = {}  # frame key -> frames nobody listens to
        self._parser: SlcanParser | None = None  # the slcan reader's counters
        self._prefixes: dict[bytes, int] = {}  # slcan line prefix -> key, listened ids
        self._factory = bus_factory
        self._bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inbox: collections.deque[Sequence[Frame] | BaseException] = collections.deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[int, list[FrameHandler]] = {}
        self._reconnect: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._tried = asyncio.Event()  # a connect attempt has finished (either way)
        self.opened_at: float | None = None  # monotonic time the bus last came up
        self.last_error: str | None = None
        self._closed = False

    # -- state ------------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Frames received, garbled adapter lines, error frames, frames nobody reads."""
        parser = self._parser
        frames, malformed = self.frames, self.malformed
        if parser is not None:
            frames, malformed = frames + parser.frames, malformed + parser.malformed
        return {"frames": frames, "malformed": malformed,
                "error_frames": self.error_frames, "unknown_ids": self.unknown_ids}

    @property
    def unknown_ids(self) -> int:
        """Frames dropped because no device listens to their id."""
        return sum(self.dropped_by_key().values())

    def dropped_by_key(self) -> dict[int, int]:
        """Frames dropped per frame key (29-bit ids carry EXTENDED), for diagnostics."""
        out = dict(self._dropped)
        parser = self._parser
        if parser is not None:
            for key, n in parser.dropped_by_id(EXTENDED).items():
                out[key] = out.get(key, 0) + n
        return out

    @property
    def dropped_ids(self) -> dict[str, int]:
        """``dropped_by_key`` with readable ids ("0x7FF", "0x18FF00AA x" for 29-bit)."""
        return {(f"0x{k & ~EXTENDED:X} x" if k & EXTENDED else f"0x{k:X}"): n
                for k, n in sorted(self.dropped_by_key().items())}

    @property
    def up(self) -> bool:
        return self._bus is not None

    def subscribe(self, key: int, handler: FrameHandler) -> None:
        self._handlers.setdefault(key, []).append(handler)
        self._listened_changed()

    def unsubscribe(self, key: int, handler: FrameHandler) -> None:
        hs = self._handlers.get(key, [])
        if handler in hs:
            hs.remove(handler)
        if not hs:
            self._handlers.pop(key, None)
        self._listened_changed()

    def _listened_changed(self) -> None:
        """Tell the reader (and the bus's own filters) which ids are listened to now."""
        self._prefixes = frame_prefixes(self._handlers, EXTENDED)  # swapped whole: no lock
        bus = self._bus
        if bus is not None and self.conn.interface in KERNEL_FILTERS:
            self._apply_filters(bus)

    def _apply_filters(self, bus: can.BusABC) -> None:
        filters: list[can.typechecking.CanFilter] = [
            {"can_id": key & ~EXTENDED, "can_mask": 0x1FFFFFFF if key & EXTENDED else 0x7FF,
             "extended": bool(key & EXTENDED)} for key in self._handlers]
        try:
            bus.set_filters(filters or None)
        except Exception as exc:  # a backend without filters: dispatch still drops
            log.info("%s: bus filters not applied (%s); unknown ids dropped at dispatch",
                     self.key, exc)

    async def ensure_open(self) -> None:
        """Start connecting on first use; raise DeviceOffline while the bus is down."""
        if self._closed:
            raise DeviceOffline(f"CAN link {self.key} is closed")
        if self._bus is not None:
            return
        if self._reconnect is None or self._reconnect.done():
            self._tried.clear()
            self._reconnect = asyncio.create_task(self._connect_loop(),
                                                  name=f"can reconnect {self.key}")
        if not self._tried.is_set():
            # the first attempt runs now; every device on the bus waits for its outcome
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.conn.timeout_s + self.conn.open_delay_s):
                    await self._tried.wait()
        if self._bus is None:
            raise DeviceOffline(f"CAN bus {self.conn.interface} '{self.conn.channel}' is "
                                f"down: {self.last_error or 'connecting'}")

    async def _connect_loop(self) -> None:
        delay = self.conn.reconnect_delay_s
        first = True
        while not self._closed:
            try:
                bus = await asyncio.to_thread(self._factory, self.conn)
            except CanLinkError as exc:
                if str(exc) != self.last_error:
                    log.error("%s: %s", self.key, exc)
                self.last_error = str(exc)
            except Exception as exc:  # a backend bug: report, keep retrying
                self.last_error = f"cannot open CAN bus: {type(exc).__name__}: {exc}"
                log.error("%s: %s", self.key, self.last_error)
            else:
                if self._closed:
                    bus.shutdown()
                    return
                self._start_reader(bus)
                if not first:
                    self.stats.reconnects += 1
                    log.info("%s: CAN bus up again", self.key)
                return
            first = False
            self._tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, self.conn.reconnect_delay_max_s)

    def _start_reader(self, bus: can.BusABC) -> None:
        self._loop = asyncio.get_running_loop()
        self._bus = bus
        self.opened_at = time.monotonic()
        self.last_error = None
        self._stop = threading.Event()
        if self.conn.interface in KERNEL_FILTERS:
            self._apply_filters(bus)
        slcan = self.conn.interface == "slcan" and hasattr(bus, "serialPortOrig")
        target = self._read_slcan if slcan else self._read_forever
        self._thread = threading.Thread(target=target, args=(bus, self._stop),
                                        name=f"can reader {self.key}", daemon=True)
        self._thread.start()
        self._up.set()
        self._tried.set()

    # -- reader thread ----------------------------------------------------------------

    def _read_slcan(self, bus: can.BusABC, stop: threading.Event) -> None:
        """Read the adapter in chunks; unknown ids are counted, never parsed."""
        read = chunk_reader(bus.serialPortOrig)  # type: ignore[attr-defined]
        parser = self._parser or SlcanParser()  # counters run on across reconnects
        parser.restart()
        self._parser = parser
        while not stop.is_set():
            try:
                chunk = read(RECV_POLL_S)
            except Exception as exc:  # the port is gone (EIO on a closed pty, unplugged)
                if not stop.is_set():
                    self._post(exc)
                return
            if not chunk:
                continue
            frames = parser.feed(chunk, self._prefixes)
            if frames:
                self._post(frames)
            if len(chunk) < COALESCE_BELOW:
                time.sleep(COALESCE_S)

    def _read_forever(self, bus: can.BusABC, stop: threading.Event) -> None:
        """Other python-can buses: block for one frame, then take what else is queued."""
        while not stop.is_set():
            batch: list[Frame] = []
            timeout: float = RECV_POLL_S
            while len(batch) < DRAIN_MAX:
                try:
                    msg = bus.recv(timeout)
                except (ValueError, IndexError, UnicodeDecodeError):
                    self.malformed += 1  # a garbled frame from the backend
                    continue
                except Exception as exc:  # the bus is gone (unplugged, interface down)
                    if batch:
                        self._post(batch)
                    if not stop.is_set():
                        self._post(exc)
                    return
                if msg is None:
                    break
                timeout = 0.0
                frame = self._accept(msg)
                if frame is not None:
                    batch.append(frame)
            if batch:
                self._post(batch)

    def _accept(self, msg: can.Message) -> Frame | None:
        """A data frame some device listens to as (key, payload); counts the others."""
        if msg.is_error_frame:
            self.error_frames += 1
            return None
        if msg.is_remote_frame:
            return None
        self.frames += 1
        key = msg.arbitration_id | EXTENDED if msg.is_extended_id else msg.arbitration_id
        if key not in self._handlers:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        return key, msg.data

    def _post(self, item: Sequence[Frame] | BaseException) -> None:
        self._inbox.append(item)
        if not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._wake_pending = False
        inbox = self._inbox
        handlers = self._handlers
        while inbox:
            item = inbox.popleft()
            if isinstance(item, BaseException):
                self._lost(item)
                continue
            now = time.monotonic()
            for key, data in item:
                hs = handlers.get(key)
                if hs is None:  # unsubscribed while the frame was on its way
                    self._dropped[key] = self._dropped.get(key, 0) + 1
                    continue
                for h in hs:
                    h(data, now)

    def deliver(self, msg: can.Message) -> None:
        """Hand one received frame to the devices listening on its id (in the loop)."""
        if msg.is_error_frame:
            self.error_frames += 1
            return
        if msg.is_remote_frame:
            return
        self.frames += 1
        key = msg.arbitration_id | EXTENDED if msg.is_extended_id else msg.arbitration_id
        hs = self._handlers.get(key)
        if hs is None:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return
        data = msg.data
        now = time.monotonic()
        for h in hs:
            h(data, now)

    def _lost(self, exc: BaseException) -> None:
        if self._bus is None:
            return
        self.last_error = f"CAN bus lost: {exc}"
        self.stats.errors += 1
        self.stats.last_error = self.last_error
        log.error("%s: %s", self.key, self.last_error)
        self._shutdown_bus()
        if not self._closed:
            self._reconnect = asyncio.get_running_loop().create_task(
                self._connect_loop(), name=f"can reconnect {self.key}")

    def _shutdown_bus(self) -> None:
        bus, self._bus = self._bus, None
        self._up.clear()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.shutdown()

    # -- sending ----------------------------------------------------------------------

    async def send(self, arbitration_id: int, data: bytes, extended: bool) -> None:
        """Put one frame on the bus; DeviceOffline/CanLinkError when it cannot."""
        await self.ensure_open()
        bus = self._bus
        assert bus is not None
        msg = can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=extended)
        self.stats.requests += 1
        try:
            await asyncio.to_thread(bus.send, msg, self.conn.timeout_s)
        except (can.CanError, OSError) as exc:
            self.stats.errors += 1
            raise CanLinkError(f"cannot send frame 0x{arbitration_id:X} on "
                               f"{self.key}: {exc}") from None

    async def close(self) -> None:
        self._closed = True
        task, self._reconnect = self._reconnect, None
        if task is not None:
            await cancel_and_wait([task])
        self._shutdown_bus()
        self._handlers.clear()
