"""One DNP3 association (master -> outstation over TCP), shared by its devices.

dnp3py's ``MasterTcpRunner`` does one exchange at a time and never reconnects; this
wraps it: one lock per link, a lost link closes the runner and sets a "not before"
time (reconnect_delay_s doubling up to reconnect_delay_max_s, reset on success), and
every request before it fails at once with DeviceOffline. Every (re)connect starts with
an integrity poll (class 0123); class 1/2/3 event polls then run when their own
interval is due, as part of the next read; unsolicited responses (when enabled) are
taken in as they arrive during requests, and drained before each read. When unsolicited
is off, one that arrives anyway is confirmed (so the outstation stops repeating it) but
its values are not taken, and the outstation is asked once per episode to disable them.

After each read the IIN housekeeping owed to the outstation runs (housekeeping.py), and
frames dropped for a bad CRC or cut short are named once per episode (framing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnp3.application.builder import (
    build_direct_operate_request,
    build_operate_request,
    build_select_request,
)
from dnp3.application.fragment import ObjectBlock, RequestFragment, ResponseFragment
from dnp3.application.parser import ParseError, parse_response_header
from dnp3.master.config import MasterConfig, PollingConfig
from dnp3.master.handler import AnalogValue, BinaryValue, CounterValue, ResponseInfo
from dnp3.master.master import Master
from dnp3.master.tcp_runner import MasterRunnerError, MasterTcpRunner, ResponseTimeoutError
from dnp3.transport_io.channel import ChannelError, TcpConfig
from dnp3.transport_io.tcp_client import TcpClientChannel

from drivers.base import DeviceOffline, DeviceTimeout, IOStats, ProtocolError, WriteError
from drivers.dnp3.commands import Operation, PointStatus, build_blocks, echoed_statuses
from drivers.dnp3.connection import Dnp3Tcp
from drivers.dnp3.framing import CountingFrameParser
from drivers.dnp3.housekeeping import (
    IIN_REFUSED,
    Action,
    Housekeeping,
    clear_restart_request,
    delay_measure_request,
    iin_names,
    outstation_delay_ms,
    record_current_time_request,
    write_time_request,
)

log = logging.getLogger("drivers.dnp3")

ONLINE = 0x01
UNSOLICITED_QUIET_S = 30.0  # no unwanted unsolicited response for this long ends an episode


def link_key(conn: Dnp3Tcp) -> str:
    return f"dnp3://{conn.host}:{conn.port}/{conn.master_address}-{conn.outstation_address}"


@dataclass(slots=True)
class Sample:
    value: float | int | bool  # a double-bit input holds its state (0..3)
    flags: int  # the outstation's quality flags (the binary state bit removed)
    ts: float  # time.time() of the response that carried it

    @property
    def online(self) -> bool:
        return bool(self.flags & ONLINE)


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
            self.values[(group, v.index)] = Sample(v.value, int(v.quality), now)
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
        for v in values:  # the state (DETERMINED_ON = 2 = closed / on) is decoded later
            self.values[(3, v.index)] = Sample(int(v.state), int(v.quality), now)
        self.updates += len(values)


@dataclass
class _CapturingMaster(Master):
    """A dnp3py Master that keeps the objects of the last solicited response (so the
    command status of each echoed control object can be read back), the IIN of every
    response (for housekeeping), and ignores unsolicited data when unsolicited is off."""

    last_objects: tuple[ObjectBlock, ...] = field(default=(), init=False)
    last_iin: int = field(default=0, init=False)
    unsolicited: int = field(default=0, init=False)
    ignored_unsolicited: int = field(default=0, init=False)
    malformed: int = field(default=0, init=False)  # fragments cut short by the parser
    iins: list[int] = field(default_factory=list, init=False)  # since the last take

    def process_response(self, data: bytes) -> ResponseInfo | None:
        if not self.config.enable_unsolicited:
            try:
                header, _ = parse_response_header(data)
            except (ParseError, ValueError, IndexError):
                return super().process_response(data)
            if header.control.uns:
                # not asked for: its values are not taken, but the runner still confirms
                # it when CON is set, or the outstation repeats it until it is
                self.ignored_unsolicited += 1
                self.iins.append(int(header.iin))
                return ResponseInfo(function=header.function, iin=header.iin,
                                    sequence=header.control.seq, is_unsolicited=True,
                                    fir=header.control.fir, fin=header.control.fin,
                                    con=header.control.con)
        return super().process_response(data)

    def _process_response_fragment(self, response: ResponseFragment) -> ResponseInfo:
        if response.truncation is not None:
            self.malformed += 1
        self.iins.append(int(response.header.iin))
        if response.header.control.uns:
            self.unsolicited += 1
        else:
            self.last_objects = tuple(response.objects)
            self.last_iin = int(response.header.iin)
        return super()._process_response_fragment(response)

    def take_iins(self) -> list[int]:
        out, self.iins = self.iins, []
        return out


class Dnp3Link:
    """A shared, lazily opened, reference-counted association with one lock."""

    def __init__(self, conn: Dnp3Tcp, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.key = link_key(conn)
        self.clock = clock  # the wall clock a time synchronisation writes to the outstation
        self.peer = f"{conn.host}:{conn.port} (outstation {conn.outstation_address})"
        self.house = Housekeeping(f"{self.key}: {self.peer}", conn.time_sync)
        self.faults: dict[str, int] = {"bad_crc": 0, "truncated": 0,
                                       "unsolicited_ignored": 0, "unsolicited_disables": 0}
        self.lock = asyncio.Lock()
        self.cache = PointCache()
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
        self._parser: CountingFrameParser | None = None
        self._bad_frames = False  # in an episode of dropped frames (logged at its start)
        self._uns_seen = 0  # ignored unsolicited responses of this connection accounted
        self._uns_last = 0.0  # monotonic time of the last one; 0 = no episode

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

    @property
    def extra_counts(self) -> dict[str, int]:
        """Fault and housekeeping counters since the link was made (for IOStats.extra)."""
        return {**self.faults, **self.house.counts}

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
            await self._housekeep(runner, stats)
            await self._unwanted_unsolicited(runner, stats)

    def _scheduled(self, what: int) -> None:
        interval = (self.conn.integrity_interval_s, self.conn.class1_interval_s,
                    self.conn.class2_interval_s, self.conn.class3_interval_s)[what]
        self._due[what] = time.monotonic() + interval if interval > 0 else 0.0

    async def _drain(self, runner: MasterTcpRunner, stats: IOStats) -> None:
        parser = self._parser
        before = (parser.bad_crc, parser.truncated) if parser is not None else (0, 0)
        for _ in range(64):  # bounded: an outstation that never stops talking can't hold us
            try:
                info = await runner.listen_unsolicited(timeout=0.002)
            except (MasterRunnerError, ChannelError) as exc:
                self._lost(str(exc))
                raise DeviceOffline(f"connection to {self.key} lost: {exc}") from None
            if info is None:
                break
        self._bad_frames_seen(parser, before, "listening for unsolicited responses")
        if self._master is not None:
            self.house.observe(self._master.take_iins())

    # ---- what the outstation asks of its master ---------------------------------------

    async def _housekeep(self, runner: MasterTcpRunner, stats: IOStats) -> None:
        """Run the requests the IIN bits seen so far ask for (restart, time, overflow)."""
        for _ in range(8):  # bounded: each round's answers may raise bits again
            action = self.house.take()
            if action is None:
                return
            if action is Action.INTEGRITY:
                await self._exchange(stats, runner.integrity_poll(), "integrity poll")
                self._scheduled(0)
            elif action is Action.CLEAR_RESTART:
                if await self._housekeeping(runner, stats, clear_restart_request, action):
                    self.house.counts["restart_clears"] += 1
            else:
                await self._time_sync(runner, stats)

    async def _housekeeping(self, runner: MasterTcpRunner, stats: IOStats, build: Any,
                            action: Action, *args: Any) -> bool:
        """One housekeeping request; False when the outstation refused it (IIN2)."""
        master = self._master
        assert master is not None
        master.last_objects, master.last_iin = (), 0
        await self._exchange(stats, runner.request(build(master.next_request_sequence(), *args)),
                             action.value)
        if master.last_iin & IIN_REFUSED:
            self.house.refused(action, master.last_iin)
            return False
        return True

    async def _time_sync(self, runner: MasterTcpRunner, stats: IOStats) -> None:
        """LAN (10.3.3.2): RECORD_CURRENT_TIME, then WRITE g50v3 = the time it was sent.
        Non-LAN (10.3.3.1): DELAY_MEASURE, then WRITE g50v1 = now + the one-way delay
        (half the round trip less the outstation's own processing time)."""
        master = self._master
        assert master is not None
        sync = Action.TIME_SYNC
        if self.conn.time_sync == "lan":
            sent = self.clock()
            if not await self._housekeeping(runner, stats, record_current_time_request, sync):
                return
            written = round(sent * 1000)
            ok = await self._housekeeping(runner, stats, write_time_request, sync, written, 3)
        else:
            start = time.monotonic()
            if not await self._housekeeping(runner, stats, delay_measure_request, sync):
                return
            round_trip_ms = (time.monotonic() - start) * 1000
            own_ms = outstation_delay_ms(master.last_objects) or 0
            written = round(self.clock() * 1000 + max(0.0, (round_trip_ms - own_ms) / 2))
            ok = await self._housekeeping(runner, stats, write_time_request, sync, written, 1)
        if ok:
            self.house.counts["time_syncs"] += 1
            log.info("%s: %s time set (%s procedure)", self.key, self.peer,
                     "LAN" if self.conn.time_sync == "lan" else "non-LAN")

    async def _unwanted_unsolicited(self, runner: MasterTcpRunner, stats: IOStats) -> None:
        """Unsolicited responses on a link where unsolicited is off: counted, logged and
        answered with DISABLE UNSOLICITED once per episode (an episode ends after
        UNSOLICITED_QUIET_S without one)."""
        master = self._master
        if master is None:
            return
        new = master.ignored_unsolicited - self._uns_seen
        self._uns_seen = master.ignored_unsolicited
        now = time.monotonic()
        if new <= 0:
            if self._uns_last and now - self._uns_last > UNSOLICITED_QUIET_S:
                self._uns_last = 0.0
                log.info("%s: unsolicited responses from %s have stopped", self.key, self.peer)
            return
        self.faults["unsolicited_ignored"] += new
        episode = bool(self._uns_last)
        self._uns_last = now
        if episode:
            return
        log.warning("%s: unsolicited responses from %s although unsolicited is off for this "
                    "connection: confirmed and ignored; asking the outstation to stop them",
                    self.key, self.peer)
        self.faults["unsolicited_disables"] += 1
        await self._exchange(stats, runner.disable_unsolicited(), "disable unsolicited")

    # ---- commands -------------------------------------------------------------------

    async def operate(self, ops: Sequence[Operation], mode: str, stats: IOStats
                      ) -> tuple[str, list[PointStatus]]:
        """SELECT+OPERATE (``mode`` "sbo") or DIRECT OPERATE: the step that answered last
        and the echoed status of every object. Raises WriteError when the outstation
        refuses the request as a whole (IIN2 bits, no objects echoed)."""
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
                    return "SELECT", echoed
                return "OPERATE", await self._command(runner, master, stats,
                                                      build_operate_request, blocks, "OPERATE")
            return "DIRECT OPERATE", await self._command(
                runner, master, stats, build_direct_operate_request, blocks, "DIRECT OPERATE")

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
        if not echoed and iin & IIN_REFUSED:
            raise WriteError(f"{self.key}: {self.peer} refused the {what} request as a "
                             f"whole: {iin_names(iin & IIN_REFUSED)}")
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
        parser = CountingFrameParser()
        runner._parser = parser  # dnp3py's own parser drops bad frames without a word
        try:
            await runner.open()
        except (MasterRunnerError, ChannelError, OSError) as exc:
            await _close_quietly(runner, channel)
            self._lost(f"cannot connect ({exc})")
            raise self._backoff_error() from None
        except BaseException:
            await _close_quietly(runner, channel)
            raise
        self._master, self._runner, self._parser = master, runner, parser
        self._uns_seen = 0
        self.house.forget()  # a new association: its IIN bits are news again
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
        next request's), a lost link backs off. The IIN of the answers go to the
        housekeeping; frames dropped on the way are named."""
        stats.requests += 1
        if what == "integrity poll":
            self.counts["integrity"] += 1
        parser = self._parser
        before = (parser.bad_crc, parser.truncated) if parser is not None else (0, 0)
        try:
            infos: list[ResponseInfo] = await coro
        except ResponseTimeoutError:
            stats.timeouts += 1
            bad = self._bad_frames_seen(parser, before, what, waiting=True)
            self._drop()
            if bad is not None:
                raise ProtocolError(f"{bad} during {what} on {self.key}; no usable answer "
                                    f"within {self.conn.timeout_s} s") from None
            raise DeviceTimeout(f"no answer within {self.conn.timeout_s} s to {what} on "
                                f"{self.key}") from None
        except (ChannelError, OSError) as exc:
            self._lost(f"connection lost ({exc})")
            raise DeviceOffline(f"connection to {self.key} lost during {what}") from None
        except MasterRunnerError as exc:
            bad = self._bad_frames_seen(parser, before, what)
            if self._runner is not None and not self._runner.is_open:
                self._lost(f"connection lost ({exc})")
                raise DeviceOffline(f"connection to {self.key} lost during {what}: {exc}"
                                    ) from None
            self._drop()
            raise ProtocolError(f"bad response to {what} on {self.key}: "
                                f"{bad + '; ' if bad else ''}{exc}") from None
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
        if self._bad_frames_seen(parser, before, what) is None and self._bad_frames:
            self._bad_frames = False
            log.info("%s: frames from %s are whole again", self.key, self.peer)
        if self._master is not None:
            self.house.observe(self._master.take_iins(), integrity=what == "integrity poll")
        return infos

    def _bad_frames_seen(self, parser: CountingFrameParser | None, before: tuple[int, int],
                         what: str, *, waiting: bool = False) -> str | None:
        """What the frame parser dropped since ``before`` ("bad CRC from ..."), counted
        and logged once per episode; ``waiting``: the exchange timed out, so a frame
        still buffered without its end was cut short."""
        if parser is None:
            return None
        bad_crc = parser.bad_crc - before[0]
        truncated = parser.truncated - before[1]
        if waiting and parser.partial_frame:
            truncated += 1
            parser.reset()  # counted once; the connection is dropped next anyway
        if not bad_crc and not truncated:
            return None
        self.faults["bad_crc"] += bad_crc
        self.faults["truncated"] += truncated
        kinds = [k for k, n in (("bad CRC", bad_crc), ("truncated frame", truncated)) if n]
        text = f"{' and '.join(kinds)} from {self.peer}"
        if not self._bad_frames:
            self._bad_frames = True
            log.warning("%s: %s during %s; frame dropped", self.key, text, what)
        return text

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
