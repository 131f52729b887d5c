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
from time import monotonic, perf_counter, time
from typing import Any

from drivers.base import DeviceOffline, DeviceTimeout, DriverError, IOStats, ProtocolError
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
# a round's outcome: each device's answers, (perf_counter, wall time) of its last answer,
# and the error of the device the round failed on (``PipelinedEndpoint.read_round``)
RoundAnswers = tuple[list[list[bytes]], list[tuple[float, float]], "DriverError | None"]


class _Lost(Exception):
    """The connection closed under the request."""


class _Garbled(Exception):
    """Bytes on the link that cannot be the answer to any request in flight."""


def _regs(n: int) -> struct.Struct:
    s = _REGS.get(n)
    if s is None:
        s = _REGS[n] = struct.Struct(f">{n}H")
    return s


class _Plan:
    """A device's read plan on the wire: its requests, and for each the answer's byte
    count, register layout (None for bits) and register or bit count."""

    __slots__ = ("blocks", "requests", "shapes", "unit")

    def __init__(self, blocks: Sequence[tuple[Function, int, int]], unit: int) -> None:
        self.blocks = blocks
        self.unit = unit
        self.requests: list[Request] = [(unit, _FC[f], _READ.pack(_FC[f], a, n))
                                        for f, a, n in blocks]
        self.shapes: list[tuple[int, struct.Struct | None, int]] = [
            ((n + 7) // 8, None, n) if f.is_bit else (2 * n, _regs(n), n)
            for f, _, n in blocks]


class _Round:
    """Requests sent one at a time by the link itself: the next goes out from the
    callback that received the answer before it, so a read of several blocks wakes its
    task once, not once per block (each wake-up is an extra loop pass with an epoll call).

    A round may hold the reads of several devices one after the other (``ends``: where
    each device's requests end). Each device's read has its own deadline, counted from
    when its first request goes out; ``marks`` holds (perf_counter, wall time) of each
    device's last answer. The round ends early, after a device, when a request of another
    asker waits for the link (a setpoint write is not held up by a whole round)."""

    __slots__ = ("answers", "deadline", "ends", "fut", "marks", "requests")

    def __init__(self, requests: Sequence[Request], ends: Sequence[int],
                 fut: asyncio.Future[list[bytes]], deadline: float) -> None:
        self.requests = requests
        self.ends = ends
        self.answers: list[bytes] = []
        self.marks: list[tuple[float, float]] = []
        self.fut = fut
        self.deadline = deadline


class _Group:
    """Requests sent together (a pipelined device read): one future for all their
    answers, set when the last one arrives, so the read wakes its task once however many
    blocks it has."""

    __slots__ = ("answers", "deadline", "fut", "missing")

    def __init__(self, n: int, fut: asyncio.Future[list[bytes]], deadline: float) -> None:
        self.answers: list[bytes] = [b""] * n
        self.missing = n
        self.fut = fut
        self.deadline = deadline

    @property
    def answered(self) -> int:
        return len(self.answers) - self.missing


_Waiter = _Round | _Group


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
        # One timer per link for every deadline of the requests in flight, not one per
        # read: armed at the earliest deadline, it fails what is due and re-arms for the
        # next (deadlines only grow, so it seldom fires while reads keep answering).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(_Lost(f"{exc or 'closed by peer'}"))
        self.ep._link_lost(self, f"connection lost ({exc or 'closed by peer'})")

    def fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter, _, _, _ in pending.values():
            if not waiter.fut.done():
                waiter.fut.set_exception(exc)

    def watch(self, deadline: float) -> None:
        """Make sure the link's timer fires no later than ``deadline``."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._expire_due)

    def _expire_due(self) -> None:
        """Fail the waiters whose deadline has passed (TimeoutError); re-arm for the rest."""
        self._timer = None
        now = self.loop.time()
        following: float | None = None
        for waiter, _, _, _ in list(self.pending.values()):
            if waiter.fut.done():
                continue
            if waiter.deadline <= now:
                waiter.fut.set_exception(TimeoutError())
            elif following is None or waiter.deadline < following:
                following = waiter.deadline
        if following is not None:
            self.watch(following)

    def send(self, requests: Sequence[Request], deadline: float) -> _Group:
        """Send every request at once; the group's one future gets all their answers'
        PDUs, in order.

        The frames are not written at once but queued until the end of this loop pass:
        the reads of every device of an endpoint that fall in one slot start in the same
        pass, so their requests leave in one write (one syscall, and one wake-up of the
        server) instead of one write per device.
        """
        group = _Group(len(requests), self.loop.create_future(), deadline)
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

    def send_round(self, requests: Sequence[Request], ends: Sequence[int],
                   deadline: float) -> _Round:
        """Send ``requests`` one at a time (each after the answer to the one before); the
        round's one future gets all their answers' PDUs, in order (``_Round``)."""
        rnd = _Round(requests, ends, self.loop.create_future(), deadline)
        self._send_link(rnd)
        return rnd

    def _send_link(self, rnd: _Round) -> None:
        assert self.transport is not None
        unit, fc, pdu = rnd.requests[len(rnd.answers)]
        self._tid = tid = (self._tid + 1) & 0xFFFF
        if self.abandoned:
            self.abandoned.discard(tid)
        self.pending[tid] = (rnd, unit, fc, 0)
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
        # Frames are parsed where they lie: in ``data`` itself when no partial frame is
        # held (nearly always: one answer a read), else in the buffer that holds one.
        buf = self._buf
        src: bytes | bytearray = data
        if buf:
            buf += data
            src = buf
        pos = 0
        size = len(src)
        while size - pos >= 8:
            tid, proto, length, unit = _MBAP.unpack_from(src, pos)
            if proto != 0:
                return self._garbage(f"not a Modbus TCP frame (protocol id 0x{proto:04x})")
            if not 2 <= length <= 254:
                return self._garbage(f"not a Modbus TCP frame (length {length})")
            end = pos + 6 + length
            if size < end:
                break
            entry = self.pending.pop(tid, None)
            if entry is None:
                if tid in self.abandoned:
                    self.abandoned.discard(tid)
                    pos = end
                    continue
                return self._garbage(f"answer to transaction {tid}, which is not in flight")
            waiter, want_unit, fc, index = entry
            why = None
            got_fc = src[pos + 7]
            if unit != want_unit:
                why = f"answer from unit {unit}, asked unit {want_unit}"
            elif got_fc != fc and got_fc != fc | 0x80:
                why = f"function code {got_fc} in the answer to function {fc}"
            if why is not None:
                self.pending[tid] = entry  # fails with the rest
                return self._garbage(why)
            if not waiter.fut.done():
                pdu = bytes(src[pos + 7:end])  # ``data``'s own slice: bytes() copies no more
                if isinstance(waiter, _Round):
                    self._round_answer(waiter, pdu)
                else:
                    waiter.answers[index] = pdu
                    waiter.missing -= 1
                    if not waiter.missing:
                        waiter.fut.set_result(waiter.answers)
            pos = end
        if src is buf:
            del buf[:pos]
        elif pos < size:
            buf += data[pos:]  # the start of a frame: kept for the next call
        return None

    def _round_answer(self, rnd: _Round, pdu: bytes) -> None:
        answers = rnd.answers
        answers.append(pdu)
        n = len(answers)
        ends = rnd.ends
        if n == ends[len(rnd.marks)]:  # a device's read is complete
            rnd.marks.append((perf_counter(), time()))
            if n == len(rnd.requests) or self.ep._slot_waiters:
                rnd.fut.set_result(answers)  # all read, or a write waits: end here
                return
            rnd.deadline = self.loop.time() + self.ep.conn.timeout_s
        self._send_link(rnd)

    def _garbage(self, why: str) -> None:
        self._buf.clear()
        self.fail_all(_Garbled(why))
        self.ep._link_garbled(self, why)


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
        self._plans: dict[int, _Plan] = {}

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
        blocks = ((function, address, count),)
        return (await self._read(blocks, _Plan(blocks, unit), unit, stats, device))[0]

    def plan_of(self, blocks: Sequence[tuple[Function, int, int]], unit: int) -> _Plan:
        """The request PDUs and answer shapes of a device's read plan, made once per plan:
        a device reads the same blocks every poll (its plan object is kept until the plan
        changes)."""
        key = id(blocks)
        hit = self._plans.get(key)
        if hit is not None and hit.blocks is blocks and hit.unit == unit:
            return hit
        plan = _Plan(blocks, unit)
        if len(self._plans) >= _REQUEST_CACHE:
            self._plans.clear()  # plans that changed or devices that left
        self._plans[key] = plan  # holds blocks: its id stays
        return plan

    async def read_many(self, blocks: Sequence[tuple[Function, int, int]], unit: int,
                        stats: IOStats, device: str = "") -> list[Sequence[int]]:
        """Every block's registers (or bits), all requests sent at once, one deadline."""
        return await self._read(blocks, self.plan_of(blocks, unit), unit, stats, device)

    async def _read(self, blocks: Sequence[tuple[Function, int, int]], plan: _Plan,
                    unit: int, stats: IOStats, device: str) -> list[Sequence[int]]:
        answers = await self._exchange(plan.requests, stats, device, "reading", blocks)
        return self.registers(plan, answers, device)

    def registers(self, plan: _Plan, answers: Sequence[bytes],
                  device: str) -> list[Sequence[int]]:
        """Every block's registers (or bits) from the PDUs answering ``plan``'s requests.

        Raises ModbusExceptionResponse for an exception answer (naming its block) and
        ProtocolError for a short one."""
        out: list[Sequence[int]] = []
        for i, pdu in enumerate(answers):
            nbytes, regs, count = plan.shapes[i]
            if len(pdu) < nbytes + 2 or pdu[1] != nbytes:
                out.append(self._odd_answer(plan, i, pdu, device))
            elif regs is not None:
                out.append(regs.unpack_from(pdu, 2))  # a well-formed register answer
            else:
                out.append([bool(pdu[2 + (k >> 3)] >> (k & 7) & 1) for k in range(count)])
        return out

    def _odd_answer(self, plan: _Plan, i: int, pdu: bytes, device: str) -> Sequence[int]:
        """An answer whose byte count is not the one asked for: the error of an exception
        answer or of a short one, or bits when the count says more bytes than needed."""
        function, address, count = plan.blocks[i]
        unit = plan.unit
        if pdu[0] & 0x80:
            self._check_exception(pdu, i, "reading", function, address, count, unit, device)
        nbytes = pdu[1] if len(pdu) > 1 else 0
        if function.is_bit:
            bits = [bool(pdu[2 + k // 8] >> (k % 8) & 1)
                    for k in range(min(count, 8 * min(nbytes, len(pdu) - 2)))]
            if len(bits) < count:
                what = _what("reading", function, address, count, unit, device)
                raise ProtocolError(f"short response: {len(bits)} of {count} bits "
                                    f"{what} on {self.key}")
            return bits
        got = min(nbytes, len(pdu) - 2) // 2
        what = _what("reading", function, address, count, unit, device)
        raise ProtocolError(f"short response: {got} of {count} registers {what} on {self.key}")

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
                except TimeoutError as exc:
                    stats.timeouts += 1
                    if attempt < self.conn.retries:
                        continue
                    raise self.failure(exc, verb, what[start], requests[start][0],
                                       device) from None
                except (_Lost, _Garbled) as exc:
                    raise self.failure(exc, verb, what[start], requests[start][0],
                                       device) from None
        return out

    def failure(self, exc: Exception, verb: str, block: tuple[Function, int, int], unit: int,
                device: str) -> DriverError:
        """The error a device's exchange ends with when the link failed under it
        (``exc``: lost, garbled or timed out), naming ``block``, its first request."""
        f, a, n = block
        what = _what(verb, f, a, n, unit, device)
        if isinstance(exc, _Lost):
            return DeviceOffline(f"connection to {self.key} lost {what}")
        if isinstance(exc, _Garbled):
            return ProtocolError(f"garbled response ({exc}) {what} on {self.key}")
        return DeviceTimeout(f"no answer within {self.conn.timeout_s} s {what} on {self.key}")

    async def read_round(self, plans: Sequence[_Plan], stats: Sequence[IOStats],
                         devices: Sequence[str]) -> RoundAnswers:
        """The reads of several devices of this endpoint, one request at a time as one
        round (``_Round``): one wake-up of the caller for all of them, not one per device.

        Returns the answers' PDUs of the devices read, in order, with (perf_counter, wall
        time) of each one's last answer, and the error of the device after them if the
        link failed under it (lost, garbled, timed out: the link is dropped as after any
        device's read). Fewer devices than asked and no error: the round ended early for
        a request of another asker (a write). Raises DriverError when the link cannot be
        used at all (closed, backing off, cannot connect). Only on a window of 1.
        """
        assert self.window == 1
        self._check_usable()
        if not self._slot_waiters and self._free >= 1:
            self._free -= 1
            slots = 1
        else:
            slots = await self._take_slots(1)
        requests: list[Request] = []
        ends: list[int] = []
        for plan in plans:
            requests.extend(plan.requests)
            ends.append(len(requests))
        link: _Link | None = None
        rnd: _Round | None = None
        error: Exception | None = None
        try:
            self._check_usable()
            link = self._link
            if link is None:
                deadline = asyncio.get_running_loop().time() + self.conn.timeout_s
                try:
                    async with asyncio.timeout_at(deadline):
                        link = await self._connect_link(stats[0])
                except (TimeoutError, _Lost) as exc:
                    error = exc
            else:
                deadline = link.loop.time() + self.conn.timeout_s
            if link is not None:
                rnd = link.send_round(requests, ends, deadline)
                link.watch(deadline)
                try:
                    await rnd.fut
                except (TimeoutError, _Lost, _Garbled) as exc:
                    error = exc
                    if isinstance(exc, TimeoutError) and link is self._link:
                        self._drop()  # a late answer must not meet a later request
        except asyncio.CancelledError:
            if link is not None and rnd is not None:
                link.abandon([rnd.fut])
                _retrieve([rnd.fut])
            raise
        finally:
            self._give_slots(slots)
        marks = rnd.marks if rnd is not None else []
        done = len(marks)
        answers = rnd.answers if rnd is not None else []
        out: list[list[bytes]] = []
        begin = 0
        for k in range(done):
            out.append(answers[begin:ends[k]])
            stats[k].requests += ends[k] - begin
            begin = ends[k]
        if done and self._down_reason is not None:
            self._answered()
        if error is None or done == len(plans):
            return out, marks, None
        failed = plans[done]
        stats[done].requests += len(failed.requests)
        if isinstance(error, TimeoutError):
            stats[done].timeouts += 1
        return out, marks, self.failure(error, "reading", failed.blocks[0], failed.unit,
                                        devices[done])

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
            # read) it is the link's timer that fails the answers' future: no Timeout
            # object, no task cancellation machinery, no timer of its own per read.
            link = self._link
            if link is None:
                deadline = asyncio.get_running_loop().time() + self.conn.timeout_s
                async with asyncio.timeout_at(deadline):
                    link = await self._connect_link(stats)
            else:
                deadline = link.loop.time() + self.conn.timeout_s
            stats.requests += len(chunk)
            if one_by_one:
                fut = link.send_round(chunk, (len(chunk),), deadline).fut
            else:
                group = link.send(chunk, deadline)
                fut = group.fut
            futs = [fut]
            link.watch(deadline)
            answers = await fut
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
