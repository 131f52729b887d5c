"""One DNP3 association (master -> outstation over TCP), shared by its devices.

dnp3py's ``MasterTcpRunner`` does one exchange at a time and never reconnects; this
wraps it: one lock per link, a lost link closes the runner and sets a "not before"
time (reconnect_delay_s doubling up to reconnect_delay_max_s, reset on success), and
every request before it fails at once with DeviceOffline. Every (re)connect starts with
an integrity poll (class 0123); class 1/2/3 event polls then run when their own
interval is due, as part of the next read; unsolicited responses (when enabled) are
taken in as they arrive during requests, and drained before each read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dnp3.application.builder import (
    build_direct_operate_request,
    build_operate_request,
    build_select_request,
)
from dnp3.application.fragment import ObjectBlock, RequestFragment, ResponseFragment
from dnp3.core.flags import IIN
from dnp3.master.config import MasterConfig, PollingConfig
from dnp3.master.handler import AnalogValue, BinaryValue, CounterValue, ResponseInfo
from dnp3.master.master import Master
from dnp3.master.tcp_runner import MasterRunnerError, MasterTcpRunner, ResponseTimeoutError
from dnp3.transport_io.channel import ChannelError, TcpConfig
from dnp3.transport_io.tcp_client import TcpClientChannel

from drivers.base import DeviceOffline, DeviceTimeout, IOStats, ProtocolError
from drivers.dnp3.commands import Operation, PointStatus, build_blocks, echoed_statuses
from gateway.config.dnp3 import Dnp3Tcp

log = logging.getLogger("drivers.dnp3")

ONLINE = 0x01
IIN_ERRORS = IIN.NO_FUNC_CODE_SUPPORT | IIN.OBJECT_UNKNOWN | IIN.PARAMETER_ERROR


def link_key(conn: Dnp3Tcp) -> str:
    return f"dnp3://{conn.host}:{conn.port}/{conn.master_address}-{conn.outstation_address}"


@dataclass(slots=True)
class Sample:
    value: float | int | bool
    online: bool
    ts: float  # time.time() of the response that carried it


@dataclass
class PointCache:
    """The latest value of every (group, index) the outstation reported: a SOE handler.

    Static and event groups land on the static group they describe (g2 -> g1, g32 -> g30
    ...), since dnp3py delivers both through the same callbacks.
    """

    values: dict[tuple[int, int], Sample] = field(default_factory=dict)
    updates: int = 0

    def _put(self, group: int, values: Sequence[Any]) -> None:
        now = time.time()
        for v in values:
            self.values[(group, v.index)] = Sample(v.value, bool(v.quality & ONLINE), now)
        self.updates += len(values)

    def on_binary_input(self, values: list[BinaryValue], info: ResponseInfo) -> None:
        self._put(1, values)

    def on_binary_output(self, values: list[BinaryValue], info: ResponseInfo) -> None:
        self._put(10, values)

    def on_analog_input(self, values: list[AnalogValue], info: ResponseInfo) -> None:
        self._put(30, values)

    def on_analog_output(self, values: list[AnalogValue], info: ResponseInfo) -> None:
        self._put(40, values)

    def on_counter(self, values: list[CounterValue], info: ResponseInfo) -> None:
        self._put(20, values)

    def on_frozen_counter(self, values: list[CounterValue], info: ResponseInfo) -> None:
        pass

    def on_double_bit_input(self, values: list[Any], info: ResponseInfo) -> None:
        now = time.time()
        for v in values:  # DETERMINED_ON (2) = closed / on
            self.values[(3, v.index)] = Sample(int(v.state) == 2, bool(v.quality & ONLINE), now)
        self.updates += len(values)


@dataclass
class _CapturingMaster(Master):
    """A dnp3py Master that keeps the objects of the last solicited response, so the
    command status of each echoed control object can be read back."""

    last_objects: tuple[ObjectBlock, ...] = field(default=(), init=False)
    last_iin: int = field(default=0, init=False)
    unsolicited: int = field(default=0, init=False)
    malformed: int = field(default=0, init=False)  # fragments cut short by the parser

    def _process_response_fragment(self, response: ResponseFragment) -> ResponseInfo:
        if response.truncation is not None:
            self.malformed += 1
        if response.header.control.uns:
            self.unsolicited += 1
        else:
            self.last_objects = tuple(response.objects)
            self.last_iin = int(response.header.iin)
        return super()._process_response_fragment(response)


class Dnp3Link:
    """A shared, lazily opened, reference-counted association with one lock."""

    def __init__(self, conn: Dnp3Tcp) -> None:
        self.conn = conn
        self.key = link_key(conn)
        self.lock = asyncio.Lock()
        self.cache = PointCache()
        self.refs = 0
        self.connects = 0
        self.counts: dict[str, int] = {"integrity": 0, "class1": 0, "class2": 0, "class3": 0,
                                       "commands": 0}
        self._master: _CapturingMaster | None = None
        self._runner: MasterTcpRunner | None = None
        self._delay = conn.reconnect_delay_s
        self._not_before = 0.0
        self._down_reason: str | None = None
        self._closed = False
        self._due: dict[int, float] = {}  # 0 = integrity, 1..3 = event class -> monotonic

    @property
    def connected(self) -> bool:
        return self._runner is not None and self._runner.is_open

    @property
    def unsolicited_received(self) -> int:
        return self._master.unsolicited if self._master is not None else 0

    @property
    def malformed_received(self) -> int:
        """Response fragments the parser cut short (values up to the bad block kept)."""
        return self._master.malformed if self._master is not None else 0

    # ---- polls ----------------------------------------------------------------------

    async def refresh(self, stats: IOStats, *, force_integrity: bool = False) -> None:
        """Connect if needed (integrity poll first), run the polls now due, and take in
        unsolicited responses waiting on the socket."""
        self._check_open()
        async with self.lock:
            connects, requests = self.connects, stats.requests
            runner = await self._ensure(stats)
            now = time.monotonic()
            fresh = self.connects != connects  # _ensure just ran the integrity poll
            if (force_integrity and not fresh) or (self._due.get(0, 0.0) and now >= self._due[0]):
                await self._exchange(stats, runner.integrity_poll(), "integrity poll")
                self._scheduled(0)
            due = [c for c in (1, 2, 3) if self._due.get(c) and now >= self._due[c]]
            if due:
                await self._exchange(stats, runner.class_poll(
                    class_1=1 in due, class_2=2 in due, class_3=3 in due),
                    f"class {'/'.join(map(str, due))} poll")
                for c in due:
                    self.counts[f"class{c}"] += 1
                    self._scheduled(c)
            if self.conn.unsolicited or (not fresh and requests == stats.requests):
                # take in unsolicited responses; on an idle link this also notices a
                # connection the outstation closed (EOF), which nothing else would
                await self._drain(runner, stats)

    def _scheduled(self, what: int) -> None:
        interval = (self.conn.integrity_interval_s, self.conn.class1_interval_s,
                    self.conn.class2_interval_s, self.conn.class3_interval_s)[what]
        self._due[what] = time.monotonic() + interval if interval > 0 else 0.0

    async def _drain(self, runner: MasterTcpRunner, stats: IOStats) -> None:
        for _ in range(64):  # bounded: an outstation that never stops talking can't hold us
            try:
                info = await runner.listen_unsolicited(timeout=0.002)
            except (MasterRunnerError, ChannelError) as exc:
                self._lost(str(exc))
                raise DeviceOffline(f"connection to {self.key} lost: {exc}") from None
            if info is None:
                return

    # ---- commands -------------------------------------------------------------------

    async def operate(self, ops: Sequence[Operation], mode: str, stats: IOStats
                      ) -> list[PointStatus]:
        """SELECT+OPERATE (``mode`` "sbo") or DIRECT OPERATE; the echoed status of every
        object. Raises ProtocolError when the outstation refuses the request as a whole."""
        self._check_open()
        blocks = build_blocks(ops)
        async with self.lock:
            runner = await self._ensure(stats)
            master = self._master
            assert master is not None
            self.counts["commands"] += 1
            if mode == "sbo":
                echoed = await self._command(runner, master, stats, build_select_request,
                                             blocks, "SELECT")
                if any(not s.ok for s in echoed) or len(echoed) < len(ops):
                    return echoed
                return await self._command(runner, master, stats, build_operate_request,
                                           blocks, "OPERATE")
            return await self._command(runner, master, stats, build_direct_operate_request,
                                       blocks, "DIRECT OPERATE")

    def after_command(self) -> None:
        """An output changed: the next read starts with an integrity poll, so the state it
        caused is seen even when event polls are off."""
        self._due[0] = 1.0  # long past

    async def _command(self, runner: MasterTcpRunner, master: _CapturingMaster,
                       stats: IOStats, build: Any, blocks: tuple[ObjectBlock, ...],
                       what: str) -> list[PointStatus]:
        request: RequestFragment = build(objects=blocks, seq=master.next_request_sequence())
        master.last_objects, master.last_iin = (), 0
        await self._exchange(stats, runner.request(request), what)
        iin = master.last_iin
        echoed = echoed_statuses(master.last_objects)
        if not echoed and iin & IIN_ERRORS:
            raise ProtocolError(f"{self.key}: outstation refused {what}: "
                                f"{IIN(iin & IIN_ERRORS)!r}")
        return echoed

    # ---- connection -----------------------------------------------------------------

    async def _ensure(self, stats: IOStats) -> MasterTcpRunner:
        if self._runner is not None and self._runner.is_open:
            return self._runner
        if self._runner is not None:
            self._lost("closed by the outstation")
            raise self._backoff_error()
        return await self._connect(stats)

    async def _connect(self, stats: IOStats) -> MasterTcpRunner:
        self._check_open()
        c = self.conn
        master = _CapturingMaster(
            config=MasterConfig(address=c.master_address, outstation_address=c.outstation_address,
                                response_timeout=c.timeout_s, enable_unsolicited=c.unsolicited,
                                polling=PollingConfig(integrity_poll_interval=0.0)),
            handler=self.cache)
        channel = TcpClientChannel(config=TcpConfig(host=c.host, port=c.port,
                                                    connect_timeout=c.link_timeout_s))
        runner = MasterTcpRunner(master=master, host=c.host, port=c.port,
                                 response_timeout=c.timeout_s, channel=channel)
        try:
            await runner.open()
        except (MasterRunnerError, ChannelError, OSError) as exc:
            await _close_quietly(runner, channel)
            self._lost(f"cannot connect ({exc})")
            raise self._backoff_error() from None
        except BaseException:
            await _close_quietly(runner, channel)
            raise
        self._master, self._runner = master, runner
        if self.connects:
            stats.reconnects += 1
        if self._down_reason is not None:
            log.info("%s: connected again", self.key)
        self.connects += 1
        # integrity poll at every (re)connect; the link counts as up once it answered
        await self._exchange(stats, runner.integrity_poll(), "integrity poll")
        if c.unsolicited:
            await self._exchange(stats, runner.enable_unsolicited(), "enable unsolicited")
        self._delay = c.reconnect_delay_s
        self._not_before = 0.0
        self._down_reason = None
        for what in range(4):
            self._scheduled(what)
        return runner

    async def _exchange(self, stats: IOStats, coro: Any, what: str) -> list[ResponseInfo]:
        """Run one request/response on the open runner, mapping failures: a timeout or a
        garbled answer drops the connection (a late answer must never be taken for the
        next request's), a lost link backs off."""
        stats.requests += 1
        if what == "integrity poll":
            self.counts["integrity"] += 1
        try:
            infos: list[ResponseInfo] = await coro
        except ResponseTimeoutError:
            stats.timeouts += 1
            self._drop()
            raise DeviceTimeout(f"no answer within {self.conn.timeout_s} s to {what} on "
                                f"{self.key}") from None
        except (ChannelError, OSError) as exc:
            self._lost(f"connection lost ({exc})")
            raise DeviceOffline(f"connection to {self.key} lost during {what}") from None
        except MasterRunnerError as exc:
            if self._runner is not None and not self._runner.is_open:
                self._lost(f"connection lost ({exc})")
                raise DeviceOffline(f"connection to {self.key} lost during {what}: {exc}"
                                    ) from None
            self._drop()
            raise ProtocolError(f"bad response to {what} on {self.key}: {exc}") from None
        except asyncio.CancelledError:
            self._drop()
            raise
        except Exception as exc:  # the parser choked on a malformed fragment
            self._drop()
            raise ProtocolError(f"malformed response to {what} on {self.key} "
                                f"({type(exc).__name__}: {exc})") from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # a cancel swallowed by wait_for inside dnp3py
        return infos

    def _drop(self) -> None:
        """Close the connection to resynchronise; the next request reconnects at once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            _schedule_close(runner)

    def _lost(self, reason: str) -> None:
        self._drop()
        if self._down_reason is None:
            log.warning("%s: %s; reconnecting with backoff", self.key, reason)
        self._down_reason = reason
        self._not_before = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.conn.reconnect_delay_max_s)

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceOffline(f"{self.key}: closed (driver closed or device detached)")
        if self._not_before and time.monotonic() < self._not_before:
            raise self._backoff_error()

    def _backoff_error(self) -> DeviceOffline:
        wait = max(0.0, self._not_before - time.monotonic())
        return DeviceOffline(f"{self.key}: {self._down_reason or 'link down'}; "
                             f"next reconnect in {wait:.2f} s")

    async def close(self) -> None:
        """Close for good."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await _close_quietly(runner, runner.channel)


_closing: set[asyncio.Task[None]] = set()


def _schedule_close(runner: MasterTcpRunner) -> None:
    """Close a runner from sync code; its channel close awaits the socket drain."""
    channel = runner.channel
    if channel is not None and hasattr(channel, "_writer") and channel._writer is not None:
        channel._writer.transport.abort()  # immediate: no drain, no task left behind
    task = asyncio.get_running_loop().create_task(_close_quietly(runner, channel),
                                                   name="dnp3 close")
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _close_quietly(runner: MasterTcpRunner, channel: Any) -> None:
    try:
        await runner.close()
        if channel is not None:
            await channel.close()
    except Exception as exc:  # closing a dead socket may complain; it is closed either way
        log.debug("closing %s: %r", channel, exc)
