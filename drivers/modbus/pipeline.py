"""Modbus TCP on a lean asyncio link, with ``max_in_flight`` requests in flight at once.

Modbus TCP tells answers apart by the MBAP transaction id, so requests need not wait for
each other: a device read sends all its blocks in one write (one syscall) and waits for
all answers under one deadline, and other devices' reads share the connection meanwhile,
up to ``max_in_flight`` requests (a bounded window; a device that handles fewer is given
a smaller one). RTU framing has no transaction id: RTU over TCP and serial links keep the
one-at-a-time endpoint.

The link's behaviour on failure is the endpoint's: backoff before reconnecting (reset only
by a good answer), an outage logged once, bytes that are not the answer to a request in
flight fail every request on the link and resynchronise it, a timeout drops the
connection so a late answer is never taken for another. A server found to answer only
one request of several sent together shrinks the window to 1; reads already queued for
the old window are granted what the new one holds, so none waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Sequence
from time import monotonic
from typing import Any

from drivers.base import DeviceOffline, DeviceTimeout, IOStats, ProtocolError
from drivers.modbus.endpoint import EXCEPTION_NAMES, Endpoint, ModbusExceptionResponse, _what
from drivers.template import Function
from gateway.config.models import ModbusTcp

log = logging.getLogger("drivers.modbus")

_FC = {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
_READ = struct.Struct(">BHH")  # function, address, count (FC1-4); FC5/FC6 have the same shape
_REGS: dict[int, struct.Struct] = {}
_REQUEST_CACHE = 4096  # read plans whose packed requests an endpoint keeps

# one request: unit, function code, PDU bytes
Request = tuple[int, int, bytes]


class _Lost(Exception):
    """The connection closed under the request."""


class _Garbled(Exception):
    """Bytes on the link that cannot be the answer to any request in flight."""


def _regs(n: int) -> struct.Struct:
    s = _REGS.get(n)
    if s is None:
        s = _REGS[n] = struct.Struct(f">{n}H")
    return s


class _Chain:
    """Requests sent one at a time by the link itself: the next goes out from the
    callback that received the answer before it, so a device read of several blocks
    wakes its task once, not once per block (each wake-up is an extra loop pass with an
    epoll call)."""

    __slots__ = ("answers", "fut", "requests")

    def __init__(self, requests: Sequence[Request], fut: asyncio.Future[list[bytes]]) -> None:
        self.requests = requests
        self.answers: list[bytes] = []
        self.fut = fut


class _Group:
    """Requests sent together (a pipelined device read): one future for all their
    answers, set when the last one arrives, so the read wakes its task once however many
    blocks it has."""

    __slots__ = ("answers", "fut", "missing")

    def __init__(self, n: int, fut: asyncio.Future[list[bytes]]) -> None:
        self.answers: list[bytes] = [b""] * n
        self.missing = n
        self.fut = fut

    @property
    def answered(self) -> int:
        return len(self.answers) - self.missing


_Waiter = _Chain | _Group


class _Link(asyncio.Protocol):
    """One TCP connection: frames out, answers matched to their requests by transaction id."""

    def __init__(self, ep: PipelinedEndpoint) -> None:
        self.ep = ep
        self.transport: asyncio.Transport | None = None
        # transaction id -> (waiter, unit, function code, index of the answer in a group)
        self.pending: dict[int, tuple[_Waiter, int, int, int]] = {}
        self.abandoned: set[int] = set()  # ids whose asker gave up (cancelled)
        self._buf = bytearray()
        self._tid = 0
        self.loop = asyncio.get_running_loop()
        self._out: bytearray | None = None  # frames queued in this loop pass, not yet written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(_Lost(f"{exc or 'closed by peer'}"))
        self.ep._link_lost(self, f"connection lost ({exc or 'closed by peer'})")

    def fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for waiter, _, _, _ in pending.values():
            if not waiter.fut.done():
                waiter.fut.set_exception(exc)

    def send(self, requests: Sequence[Request]) -> _Group:
        """Send every request at once; the group's one future gets all their answers'
        PDUs, in order.

        The frames are not written at once but queued until the end of this loop pass:
        the reads of every device of an endpoint that fall in one slot start in the same
        pass, so their requests leave in one write (one syscall, and one wake-up of the
        server) instead of one write per device.
        """
        group = _Group(len(requests), self.loop.create_future())
        out = self._out
        if out is None:
            out = self._out = bytearray()
            self.loop.call_soon(self._flush)
        pending, abandoned = self.pending, self.abandoned
        for index, (unit, fc, pdu) in enumerate(requests):
            self._tid = tid = (self._tid + 1) & 0xFFFF
            if abandoned:
                abandoned.discard(tid)
            out += _MBAP.pack(tid, 0, len(pdu) + 1, unit)
            out += pdu
            pending[tid] = (group, unit, fc, index)
        return group

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self.transport.is_closing():
            self.ep.writes += 1
            self.transport.write(out)

    def send_chain(self, requests: Sequence[Request]) -> asyncio.Future[list[bytes]]:
        """Send ``requests`` one at a time (each after the answer to the one before);
        one future for all their answers' PDUs, in order."""
        chain = _Chain(requests, self.loop.create_future())
        self._send_link(chain)
        return chain.fut

    def _send_link(self, chain: _Chain) -> None:
        assert self.transport is not None
        unit, fc, pdu = chain.requests[len(chain.answers)]
        self._tid = tid = (self._tid + 1) & 0xFFFF
        if self.abandoned:
            self.abandoned.discard(tid)
        self.pending[tid] = (chain, unit, fc, 0)
        self.ep.writes += 1
        self.transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)

    def abandon(self, futs: Sequence[asyncio.Future[Any]]) -> None:
        """The asker gave up on these: a late answer to them is dropped quietly."""
        gone = set(futs)
        for tid, (waiter, _, _, _) in list(self.pending.items()):
            if waiter.fut in gone:
                del self.pending[tid]
                self.abandoned.add(tid)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 8:
            tid, proto, length, unit = _MBAP.unpack_from(buf)
            if proto != 0:
                return self._garbage(f"not a Modbus TCP frame (protocol id 0x{proto:04x})")
            if not 2 <= length <= 254:
                return self._garbage(f"not a Modbus TCP frame (length {length})")
            end = 6 + length
            if len(buf) < end:
                return None
            entry = self.pending.pop(tid, None)
            if entry is None:
                if tid in self.abandoned:
                    self.abandoned.discard(tid)
                    del buf[:end]
                    continue
                return self._garbage(f"answer to transaction {tid}, which is not in flight")
            waiter, want_unit, fc, index = entry
            why = None
            if unit != want_unit:
                why = f"answer from unit {unit}, asked unit {want_unit}"
            elif buf[7] not in (fc, fc | 0x80):
                why = f"function code {buf[7]} in the answer to function {fc}"
            if why is not None:
                self.pending[tid] = entry  # fails with the rest
                return self._garbage(why)
            if isinstance(waiter, _Chain):
                chain = waiter
                if not chain.fut.done():
                    chain.answers.append(bytes(buf[7:end]))
                    if len(chain.answers) < len(chain.requests):
                        self._send_link(chain)
                    else:
                        chain.fut.set_result(chain.answers)
            elif not waiter.fut.done():
                waiter.answers[index] = bytes(buf[7:end])
                waiter.missing -= 1
                if not waiter.missing:
                    waiter.fut.set_result(waiter.answers)
            del buf[:end]
        return None

    def _garbage(self, why: str) -> None:
        self._buf.clear()
        self.fail_all(_Garbled(why))
        self.ep._link_garbled(self, why)


def _expire(fut: asyncio.Future[Any]) -> None:
    """A read's deadline passed: its answers' future fails with TimeoutError."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def _retrieve(futs: Sequence[asyncio.Future[Any]]) -> None:
    """Mark the failures of ``futs`` retrieved (no "never retrieved" warnings)."""
    for f in futs:
        if f.done() and not f.cancelled():
            f.exception()


class PipelinedEndpoint(Endpoint):
    """A Modbus TCP endpoint with up to ``conn.max_in_flight`` requests in flight."""

    def __init__(self, conn: ModbusTcp) -> None:
        super().__init__(conn)
        self.window = conn.max_in_flight
        self._free = self.window
        self._slot_waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self.writes = 0  # transport writes: requests / writes is how well they coalesce
        self._request_cache: dict[int, tuple[Sequence[tuple[Function, int, int]], int,
                                             list[Request]]] = {}

    @property
    def pipeline_window(self) -> int:
        return self.window

    @property
    def connected(self) -> bool:
        return self._link is not None

    # ---- requests -------------------------------------------------------------------

    async def read(self, function: Function, address: int, count: int, unit: int,
                   stats: IOStats, device: str = "") -> Sequence[int]:
        # a one-off (a write's read-back): packed here, not kept in the plan cache
        fc = _FC[function]
        blocks = ((function, address, count),)
        return (await self._read(blocks, [(unit, fc, _READ.pack(fc, address, count))], unit,
                                 stats, device))[0]

    def _requests_of(self, blocks: Sequence[tuple[Function, int, int]],
                     unit: int) -> list[Request]:
        """The request PDUs of a device's read plan, packed once per plan: a device reads
        the same blocks every poll (its plan object is kept until the plan changes)."""
        key = id(blocks)
        hit = self._request_cache.get(key)
        if hit is not None and hit[0] is blocks and hit[1] == unit:
            return hit[2]
        requests = [(unit, _FC[f], _READ.pack(_FC[f], a, n)) for f, a, n in blocks]
        if len(self._request_cache) >= _REQUEST_CACHE:
            self._request_cache.clear()  # plans that changed or devices that left
        self._request_cache[key] = (blocks, unit, requests)  # holds blocks: its id stays
        return requests

    async def read_many(self, blocks: Sequence[tuple[Function, int, int]], unit: int,
                        stats: IOStats, device: str = "") -> list[Sequence[int]]:
        """Every block's registers (or bits), all requests sent at once, one deadline."""
        return await self._read(blocks, self._requests_of(blocks, unit), unit, stats, device)

    async def _read(self, blocks: Sequence[tuple[Function, int, int]], requests: list[Request],
                    unit: int, stats: IOStats, device: str) -> list[Sequence[int]]:
        answers = await self._exchange(requests, stats, device, "reading", blocks)
        out: list[Sequence[int]] = []
        for i, ((function, address, count), pdu) in enumerate(zip(blocks, answers,
                                                                  strict=True)):
            if pdu[0] & 0x80:
                self._check_exception(pdu, i, "reading", function, address, count, unit,
                                      device)
            nbytes = pdu[1] if len(pdu) > 1 else 0
            if function.is_bit:
                bits = [bool(pdu[2 + k // 8] >> (k % 8) & 1)
                        for k in range(min(count, 8 * min(nbytes, len(pdu) - 2)))]
                if len(bits) < count:
                    what = _what("reading", function, address, count, unit, device)
                    raise ProtocolError(f"short response: {len(bits)} of {count} bits "
                                        f"{what} on {self.key}")
                out.append(bits)
                continue
            if nbytes != 2 * count or len(pdu) - 2 < nbytes:
                got = min(nbytes, len(pdu) - 2) // 2
                what = _what("reading", function, address, count, unit, device)
                raise ProtocolError(f"short response: {got} of {count} registers "
                                    f"{what} on {self.key}")
            out.append(_regs(count).unpack_from(pdu, 2))
        return out

    async def write_registers(self, address: int, values: list[int], unit: int,
                              stats: IOStats, device: str = "") -> None:
        if len(values) == 1:
            pdu = _READ.pack(6, address, values[0] & 0xFFFF)
            fc = 6
        else:
            n = len(values)
            pdu = struct.pack(f">BHHB{n}H", 16, address, n, 2 * n,
                              *(v & 0xFFFF for v in values))
            fc = 16
        await self._write(fc, pdu, address, len(values), Function.HOLDING, unit, stats, device)

    async def write_coil(self, address: int, value: bool, unit: int, stats: IOStats,
                         device: str = "") -> None:
        pdu = _READ.pack(5, address, 0xFF00 if value else 0)
        await self._write(5, pdu, address, 1, Function.COIL, unit, stats, device)

    async def _write(self, fc: int, pdu: bytes, address: int, count: int, function: Function,
                     unit: int, stats: IOStats, device: str) -> None:
        (answer,) = await self._exchange([(unit, fc, pdu)], stats, device, "writing",
                                         [(function, address, count)])
        if answer[0] & 0x80:
            self._check_exception(answer, 0, "writing", function, address, count, unit,
                                  device)

    def _check_exception(self, pdu: bytes, index: int, verb: str, function: Function,
                         address: int, count: int, unit: int, device: str) -> None:
        """Raise the exception answer ``pdu`` (its function code has the 0x80 bit)."""
        code = pdu[1] if len(pdu) > 1 else 0
        name = EXCEPTION_NAMES.get(code, "UNKNOWN EXCEPTION")
        exc = ModbusExceptionResponse(
            f"{name} ({code}) {_what(verb, function, address, count, unit, device)}", code)
        exc.block = index
        raise exc

    async def _exchange(self, requests: list[Request], stats: IOStats, device: str,
                        verb: str, what: Sequence[tuple[Function, int, int]]) -> list[bytes]:
        """Send ``requests`` and return their answers' PDUs in order.

        With a window of 1 the read holds the connection and sends one request after the
        other; with a larger one it sends as many as it was given slots for in one write.
        Either way each exchange has one deadline, not one per request.
        """
        out: list[bytes] = []
        while len(out) < len(requests):
            start = len(out)
            for attempt in range(self.conn.retries + 1):
                try:
                    out.extend(await self._exchange_chunk(requests, start, stats))
                    break
                except _Lost:
                    f, a, n = what[start]
                    raise DeviceOffline(f"connection to {self.key} lost "
                                        f"{_what(verb, f, a, n, requests[start][0], device)}"
                                        ) from None
                except _Garbled as exc:
                    f, a, n = what[start]
                    raise ProtocolError(f"garbled response ({exc}) "
                                        f"{_what(verb, f, a, n, requests[start][0], device)} "
                                        f"on {self.key}") from None
                except TimeoutError:
                    stats.timeouts += 1
                    if attempt < self.conn.retries:
                        continue
                    f, a, n = what[start]
                    raise DeviceTimeout(f"no answer within {self.conn.timeout_s} s "
                                        f"{_what(verb, f, a, n, requests[start][0], device)} "
                                        f"on {self.key}") from None
        return out

    async def _exchange_chunk(self, requests: list[Request], start: int,
                              stats: IOStats) -> list[bytes]:
        """The answers to ``requests[start:]``, or to as many of them as the window let
        go out together (at least one)."""
        self._check_usable()
        want = len(requests) - start
        need = want if want < self.window else self.window
        if not self._slot_waiters and self._free >= need:  # no wait: no coroutine
            self._free -= need
            slots = need
        else:
            slots = await self._take_slots(want)
        futs: list[asyncio.Future[Any]] = []
        answers: list[bytes] = []
        link: _Link | None = None
        group: _Group | None = None
        # decided once the slots are granted: the window may have shrunk meanwhile
        one_by_one = self.window == 1
        chunk = requests[start:] if one_by_one else requests[start:start + slots]
        try:
            self._check_usable()  # closed or failed while this read waited for the window
            # One deadline for connecting and the exchange. On an open link (nearly every
            # read) it is a bare timer that fails the answers' future: no Timeout object,
            # no task cancellation machinery per read.
            link = self._link
            deadline = None
            if link is None:
                deadline = asyncio.get_running_loop().time() + self.conn.timeout_s
                async with asyncio.timeout_at(deadline):
                    link = await self._connect_link(stats)
            stats.requests += len(chunk)
            if one_by_one:
                fut = link.send_chain(chunk)
            else:
                group = link.send(chunk)
                fut = group.fut
            futs = [fut]
            loop = link.loop
            timer = loop.call_at(loop.time() + self.conn.timeout_s if deadline is None
                                 else deadline, _expire, fut)
            try:
                answers = await fut
            finally:
                timer.cancel()
        except TimeoutError:
            _retrieve(futs)
            if link is not None and link is self._link:
                self._drop()  # a late answer must not meet a later request
            if (len(chunk) > 1 and not one_by_one and self.window > 1
                    and group is not None and group.answered):
                # Some answered, the rest never will: a server that handles one request
                # at a time and drops what else it received (pymodbus' server does).
                log.warning("%s: answered only part of %d requests sent together; sending "
                            "one at a time from now on (set max_in_flight: 1 for it)",
                            self.key, len(chunk))
                self._free -= self.window - 1
                self.window = 1
            raise
        except asyncio.CancelledError:
            if link is not None:
                link.abandon(futs)
            _retrieve(futs)
            raise
        except BaseException:
            _retrieve(futs)  # a failed link fails them all: one is raised, none left unread
            raise
        finally:
            self._give_slots(slots)
        if self._down_reason is not None:
            self._answered()
        return answers

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._not_before and monotonic() < self._not_before:
            raise self._backoff_error()

    # ---- the window -----------------------------------------------------------------

    async def _take_slots(self, n: int) -> int:
        """Wait for up to ``n`` free request slots (never more than the window holds),
        first come first served (a poll walking its devices must not starve a setpoint
        write queued behind it); returns how many were granted."""
        if not self._slot_waiters:
            need = min(n, self.window)
            if self._free >= need:
                self._free -= need
                return need
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append((n, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_slots(fut.result())  # granted as the cancel came: hand them on
            elif (n, fut) in self._slot_waiters:
                self._slot_waiters.remove((n, fut))
            raise

    def _give_slots(self, n: int) -> None:
        self._free += n
        waiters = self._slot_waiters
        # The window can shrink while reads wait: a read asks for what it would like and
        # is granted what the window holds now, so no waiter can need more than exists.
        while waiters and self._free >= min(waiters[0][0], self.window):
            want, fut = waiters.popleft()
            if fut.done():  # its task was cancelled while it waited
                continue
            need = min(want, self.window)
            self._free -= need
            fut.set_result(need)

    # ---- connection -----------------------------------------------------------------

    async def _connect_link(self, stats: IOStats) -> _Link:
        if self._connecting is not None:  # another read is connecting: share its result
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            link = await self._open(stats)
        except BaseException as exc:
            if not self._connecting.done():
                self._connecting.set_exception(
                    exc if isinstance(exc, Exception) else DeviceOffline(f"{self.key}: "
                                                                         "connect cancelled"))
                self._connecting.exception()  # retrieved: no "never retrieved" warning
            raise
        else:
            self._connecting.set_result(link)
            return link
        finally:
            self._connecting = None

    async def _open(self, stats: IOStats) -> _Link:
        assert isinstance(self.conn, ModbusTcp)
        self._attempts += 1
        loop = asyncio.get_running_loop()
        try:
            bind = self.conn.bind_address()  # connect from this local address
            _, link = await loop.create_connection(lambda: _Link(self), self.conn.host,
                                                   self.conn.port,
                                                   local_addr=(bind, 0) if bind else None)
        except OSError as exc:
            log.debug("connect to %s: %s", self.key, exc)
            self._outage("cannot connect")
            self._back_off()
            raise self._backoff_error() from None
        if self._closed:
            if link.transport is not None:
                link.transport.close()
            raise self._closed_error()
        if link.transport is None or link.transport.is_closing():
            # hung up before this task resumed: its connection_lost found no link to drop
            self._outage("connection lost (closed by peer)")
            self._back_off()
            raise _Lost("closed by peer")
        if self.connects:
            stats.reconnects += 1
        self.connects += 1
        self._link = link
        return link

    def _link_lost(self, link: _Link, reason: str) -> None:
        if link is not self._link:
            return  # we dropped it ourselves
        self._link = None
        self._outage(reason)
        self._back_off()

    def _link_garbled(self, link: _Link, why: str) -> None:
        if link is not self._link:
            return
        self._garbled(why)

    def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.fail_all(_Lost("dropped to resynchronise"))
            if link.transport is not None:
                link.transport.close()

    def close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.fail_all(_Lost("closed"))
            if link.transport is not None:
                link.transport.close()

    def __repr__(self) -> str:
        return f"PipelinedEndpoint({self.key}, window={self.window})"
