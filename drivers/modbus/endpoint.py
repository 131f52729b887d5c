"""One physical Modbus link (a TCP endpoint or a serial port), shared by every unit id.

Only this module knows pymodbus clients, sockets and reconnecting. pymodbus' own
reconnect and retries are switched off; instead a lost link sets a "not before" time
(reconnect_delay_s doubling up to reconnect_delay_max_s) and every request before it
fails at once with DeviceOffline, so a poller is never held up by a dead device. The
backoff resets only on a good response, not on a TCP connect: a server that accepts and
then hangs up or talks garbage is an outage, retried ever more slowly. An outage is
logged once when it starts and once when the link answers again.

After a timeout or a garbled frame the connection is dropped and reopened on the next
request, so a late answer can never be taken for the next request's (RTU framing has no
transaction id to tell them apart). Bytes that are not a Modbus frame are caught here,
before pymodbus sees them, so they never end in a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from asyncio import current_task
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import DeviceOffline, DeviceTimeout, IOStats, ProtocolError
from drivers.template import Function
from gateway.config.models import ModbusRtuOverTcp, ModbusSerial, ModbusTcp

log = logging.getLogger("drivers.modbus")

ConnectionConfig = ModbusTcp | ModbusRtuOverTcp | ModbusSerial
Client = AsyncModbusTcpClient | AsyncModbusSerialClient

EXCEPTION_NAMES = {
    1: "ILLEGAL FUNCTION", 2: "ILLEGAL DATA ADDRESS", 3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE", 5: "ACKNOWLEDGE", 6: "SERVER DEVICE BUSY",
    7: "NEGATIVE ACKNOWLEDGE", 8: "MEMORY PARITY ERROR", 10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}
ILLEGAL_DATA_ADDRESS = 2

# the function code each request method sends, to check the answer carries it
_FUNCTION_CODE = {
    "read_coils": 1, "read_discrete_inputs": 2, "read_holding_registers": 3,
    "read_input_registers": 4, "write_coil": 5, "write_register": 6, "write_registers": 16,
}

_READ_METHOD = {
    Function.HOLDING: "read_holding_registers", Function.INPUT: "read_input_registers",
    Function.COIL: "read_coils", Function.DISCRETE: "read_discrete_inputs",
}


class ModbusExceptionResponse(ProtocolError):
    """The device answered with a Modbus exception; ``code`` is its exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.block = 0  # which request of a read_many the device refused


class _Garbage(Exception):
    """Bytes that cannot be the answer to the request in flight; the text says why."""


class _LinkLost(Exception):
    """Set on the pending response when the transport closes under a request."""

    def __init__(self, cause: Exception | None) -> None:
        super().__init__(str(cause))
        self.cause = cause


_HEADER = struct.Struct(">HHHBB")  # MBAP (transaction, protocol, length, unit), function


def endpoint_key(conn: ConnectionConfig) -> str:
    """The physical link a connection config names; equal keys share one connection."""
    if isinstance(conn, ModbusSerial):
        return f"serial://{conn.port}"
    scheme = "rtu+tcp" if isinstance(conn, ModbusRtuOverTcp) else "tcp"
    return f"{scheme}://{conn.host}:{conn.port}"


def make_client(conn: ConnectionConfig, name: str) -> Client:
    """A pymodbus client with its own reconnects and retries switched off."""
    common: dict[str, Any] = {"name": name, "timeout": conn.timeout_s, "retries": 0,
                              "reconnect_delay": 0, "reconnect_delay_max": 0}
    if isinstance(conn, ModbusSerial):
        return AsyncModbusSerialClient(conn.port, framer=FramerType.RTU,
                                       baudrate=conn.baudrate, bytesize=conn.bytesize,
                                       parity=conn.parity, stopbits=conn.stopbits, **common)
    framer = FramerType.RTU if isinstance(conn, ModbusRtuOverTcp) else FramerType.SOCKET
    bind = conn.bind_address()
    return AsyncModbusTcpClient(conn.host, port=conn.port, framer=framer,
                                source_address=(bind, 0) if bind else None, **common)


def _not_a_frame(data: bytes, unit: int, tid: int, fc: int) -> str | None:
    """Why ``data`` (the start of a Modbus TCP answer) cannot be the answer asked for."""
    if len(data) >= 8:  # the whole header at once (every answer): one unpack, no slices
        got_tid, proto, length, got_unit, got_fc = _HEADER.unpack_from(data)
        if ((not fc or got_fc == fc or got_fc == fc | 0x80) and proto == 0
                and 2 <= length <= 254 and (not unit or got_unit == unit)
                and (not tid or got_tid == tid)):
            return None
    if len(data) >= 8 and fc and data[7] not in (fc, fc | 0x80):
        return f"function code {data[7]} in the answer to function {fc}"
    if len(data) >= 4 and data[2:4] != b"\x00\x00":
        return f"not a Modbus TCP frame (protocol id 0x{data[2:4].hex()})"
    if len(data) >= 6 and not 2 <= int.from_bytes(data[4:6], "big") <= 254:
        return f"not a Modbus TCP frame (length {int.from_bytes(data[4:6], 'big')})"
    if len(data) >= 7 and unit and data[6] != unit:
        return f"answer from unit {data[6]}, asked unit {unit}"
    if len(data) >= 2 and tid and int.from_bytes(data[0:2], "big") != tid:
        return f"answer to transaction {int.from_bytes(data[0:2], 'big')}, asked {tid}"
    return None


def _what(verb: str, function: str, address: int, count: int, unit: int, device: str) -> str:
    who = f"{device} (unit {unit})" if device else f"unit {unit}"
    return f"{verb} {function} {address}+{count} from {who}"


class Endpoint:
    """A shared, lazily opened, reference-counted connection with one lock."""

    def __init__(self, conn: ConnectionConfig,
                 client_factory: Callable[[ConnectionConfig, str], Client] = make_client
                 ) -> None:
        self.conn = conn
        self.key = endpoint_key(conn)
        self.lock = asyncio.Lock()
        self.refs = 0
        self.connects = 0  # successful connects over the endpoint's life
        self._factory = client_factory
        self._client: Client | None = None
        self._in_flight = False
        self._expect_fc = 0  # function code of the request in flight
        self._delay = conn.reconnect_delay_s
        self._not_before = 0.0
        self._down_reason: str | None = None  # set while an outage lasts
        self._down_since = 0.0
        self._attempts = 0  # connect attempts since the outage began
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def pipeline_window(self) -> int:
        """Device reads that may be in flight at once (1: requests wait for each other)."""
        return 1

    @property
    def backoff_s(self) -> float:
        """How long the link waits before reconnecting if it fails now (diagnostics)."""
        return self._delay

    # ---- requests -------------------------------------------------------------------

    async def read(self, function: Function, address: int, count: int, unit: int,
                   stats: IOStats, device: str = "") -> Sequence[int]:
        """Registers (or bits) ``address..address+count-1``; exactly ``count`` of them.

        ``device``: the id of the device asking, named in every error it gets.
        """
        rsp = await self._call(_READ_METHOD[function], (address,), {"count": count}, unit,
                               stats, "reading", function, address, count, device)
        if function.is_bit:
            bits: Sequence[bool] = rsp.bits
            if len(bits) < count:
                raise ProtocolError(f"short response: {len(bits)} of {count} bits "
                                    f"{_what('reading', function, address, count, unit, device)} "
                                    f"on {self.key}")
            return bits
        regs: Sequence[int] = rsp.registers
        if len(regs) != count:
            # pymodbus accepts a response with fewer registers than asked for.
            raise ProtocolError(f"short response: {len(regs)} of {count} registers "
                                f"{_what('reading', function, address, count, unit, device)} "
                                f"on {self.key}")
        return regs

    async def read_many(self, blocks: Sequence[tuple[Function, int, int]], unit: int,
                        stats: IOStats, device: str = "") -> list[Sequence[int]]:
        """``read`` of every (function, address, count) block, in order; an exception
        answer names its block in ``ModbusExceptionResponse.block``."""
        out: list[Sequence[int]] = []
        for index, (function, address, count) in enumerate(blocks):
            try:
                out.append(await self.read(function, address, count, unit, stats, device))
            except ModbusExceptionResponse as exc:
                exc.block = index
                raise
        return out

    async def write_registers(self, address: int, values: list[int], unit: int,
                              stats: IOStats, device: str = "") -> None:
        """FC6 for one register, FC16 for more."""
        if len(values) == 1:
            await self._call("write_register", (address, values[0]), {}, unit, stats,
                             "writing", Function.HOLDING, address, 1, device)
        else:
            await self._call("write_registers", (address, values), {}, unit, stats,
                             "writing", Function.HOLDING, address, len(values), device)

    async def write_coil(self, address: int, value: bool, unit: int, stats: IOStats,
                         device: str = "") -> None:
        await self._call("write_coil", (address, value), {}, unit, stats,
                         "writing", Function.COIL, address, 1, device)

    async def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    unit: int, stats: IOStats, verb: str, function: Function, address: int,
                    count: int, device: str = "") -> ModbusPDU:
        if self._not_before and monotonic() < self._not_before:
            raise self._backoff_error()
        if self._closed:
            raise self._closed_error()
        async with self.lock:
            for attempt in range(self.conn.retries + 1):
                client = self._client or await self._connect(stats)
                stats.requests += 1
                self._in_flight = True
                self._expect_fc = _FUNCTION_CODE.get(method, 0)
                try:
                    rsp: ModbusPDU = await getattr(client, method)(*args, device_id=unit,
                                                                   **kwargs)
                except ModbusIOException as exc:
                    if "No response" not in str(exc):
                        self._garbled(str(exc))
                        what = _what(verb, function, address, count, unit, device)
                        raise ProtocolError(f"{exc} {what} on {self.key}") from None
                    self._drop()
                    stats.timeouts += 1
                    if attempt < self.conn.retries:
                        continue
                    raise DeviceTimeout(f"no answer within {self.conn.timeout_s} s "
                                        f"{_what(verb, function, address, count, unit, device)} "
                                        f"on {self.key}") from None
                except _LinkLost as exc:
                    if isinstance(exc.cause, ModbusException | _Garbage):
                        self._garbled(str(exc.cause))
                        raise ProtocolError(f"garbled response ({exc.cause}) "
                                            f"{_what(verb, function, address, count, unit, device)}"
                                            f" on {self.key}") from None
                    raise DeviceOffline(f"connection to {self.key} lost "
                                        f"{_what(verb, function, address, count, unit, device)}"
                                        ) from None
                except ConnectionException as exc:
                    self._lost(client, str(exc))
                    raise DeviceOffline(f"{self.key}: {exc}") from None
                except asyncio.CancelledError:
                    self._drop()  # an answer may still come: never pair it with the next request
                    raise
                except Exception as exc:  # a malformed frame pymodbus could not handle
                    self._garbled(f"{type(exc).__name__}: {exc}")
                    raise ProtocolError(f"bad response ({type(exc).__name__}: {exc}) "
                                        f"{_what(verb, function, address, count, unit, device)} "
                                        f"on {self.key}") from None
                finally:
                    self._in_flight = False
                task = current_task()
                if task is not None and task.cancelling():
                    # Python 3.11's wait_for (inside pymodbus) returns the answer and drops
                    # a cancel that raced with it; honour the cancel or the task polls on.
                    raise asyncio.CancelledError
                self._answered()  # an exception answer too: the link itself is healthy
                if rsp.isError():
                    code = int(getattr(rsp, "exception_code", 0))
                    name = EXCEPTION_NAMES.get(code, "UNKNOWN EXCEPTION")
                    what = _what(verb, function, address, count, unit, device)
                    raise ModbusExceptionResponse(f"{name} ({code}) {what}", code)
                return rsp
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- connection -----------------------------------------------------------------

    async def _connect(self, stats: IOStats) -> Client:
        if self._closed:
            raise self._closed_error()
        if self._not_before and monotonic() < self._not_before:
            raise self._backoff_error()
        client = self._factory(self.conn, self.key)
        self._watch(client)
        self._attempts += 1
        try:
            ok = await client.connect()
        except Exception as exc:  # pymodbus handles OSError; anything else is a failure too
            log.debug("connect to %s raised %r", self.key, exc)
            ok = False
        if self._closed:  # closed while connecting
            client.close()
            raise self._closed_error()
        if not ok:
            client.close()
            self._lost(None, "cannot connect")
            raise self._backoff_error()
        if self.connects:
            stats.reconnects += 1
        self.connects += 1
        # The backoff stays until the device answers: a server that accepts and hangs up
        # must not be hammered once per poll.
        self._client = client
        return client

    def _answered(self) -> None:
        """A well-formed response arrived: the outage (if any) is over."""
        if self._down_reason is None:
            return
        log.info("%s: recovered after %.1f s / %d attempts", self.key,
                 monotonic() - self._down_since, self._attempts)
        self._down_reason = None
        self._attempts = 0
        self._delay = self.conn.reconnect_delay_s
        self._not_before = 0.0

    def _outage(self, reason: str) -> bool:
        """Note a link failure; True when it starts an outage (logged here, once)."""
        if self._down_reason is None:
            log.warning("%s: %s; retrying with backoff", self.key, reason)
            self._down_since = monotonic()
            self._attempts = 0
            self._down_reason = reason
            return True
        self._down_reason = reason
        return False

    def _garbled(self, reason: str) -> None:
        """Bytes that are not a valid answer: resynchronise at once the first time (line
        noise), back off when the device keeps doing it."""
        self._drop()
        if self._outage(f"garbled response ({reason})"):
            return
        self._back_off()

    def _watch(self, client: Client) -> None:
        """Fail the pending request at once when the link drops (pymodbus would wait)."""
        ctx = client.ctx
        original = ctx.callback_disconnected

        def disconnected(exc: Exception | None) -> None:
            original(exc)
            if client is not self._client:
                return  # we closed it ourselves
            if self._in_flight and not ctx.response_future.done():
                ctx.response_future.set_exception(_LinkLost(exc))
            if isinstance(exc, ModbusException):
                self._garbled(str(exc))
            else:
                self._lost(client, f"connection lost ({exc or 'closed by peer'})")

        receive = ctx.callback_data
        socket_framed = isinstance(self.conn, ModbusTcp)

        def data(buffer: bytes, addr: tuple[Any, ...] | None = None) -> int:
            # pymodbus raises from inside the protocol callback on a frame it cannot
            # decode (asyncio then logs a traceback) and only logs and waits on a frame
            # that is not Modbus TCP at all: catch both here and fail the request now.
            why = None
            if socket_framed:
                why = _not_a_frame(buffer, ctx.request_dev_id, ctx.request_transaction_id,
                                   self._expect_fc)
            if why is None:
                try:
                    return int(receive(buffer, addr))
                except Exception as exc:
                    why = str(exc) or type(exc).__name__
            if client is not self._client:
                return len(buffer)  # already dropped: the rest of a garbled answer
            if self._in_flight and not ctx.response_future.done():
                self._drop()  # the request's own handler notes the outage
                ctx.response_future.set_exception(_LinkLost(_Garbage(why)))
            else:  # unsolicited bytes: the link cannot be trusted
                self._garbled(why)
            return len(buffer)

        setattr(ctx, "callback_data", data)  # noqa: B010
        setattr(ctx, "callback_disconnected", disconnected)  # noqa: B010

    def _lost(self, client: Client | None, reason: str) -> None:
        """The link is down: close it and back off before the next connect."""
        if client is not None and client is self._client:
            self._client = None
            client.close()
        self._outage(reason)
        self._back_off()

    def _back_off(self) -> None:
        self._not_before = monotonic() + self._delay
        self._delay = min(self._delay * 2, self.conn.reconnect_delay_max_s)

    def _drop(self) -> None:
        """Close the connection to resynchronise; the next request reconnects at once."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _backoff_error(self) -> DeviceOffline:
        wait = max(0.0, self._not_before - monotonic())
        return DeviceOffline(f"{self.key}: {self._down_reason or 'link down'}; "
                             f"next reconnect in {wait:.2f} s")

    def _closed_error(self) -> DeviceOffline:
        return DeviceOffline(f"{self.key}: closed (driver closed or device detached)")

    def close(self) -> None:
        """Close for good (any request in flight fails with DeviceOffline)."""
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        fut = client.ctx.response_future
        if self._in_flight and not fut.done():
            fut.set_exception(_LinkLost(None))
        client.close()
