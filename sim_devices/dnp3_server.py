"""Simulated DNP3 outstations (dnp3py) on the same SimSite physics as the Modbus sims.

One outstation per ``dnp3_tcp`` connection serves the point maps of every device on it
(e.g. the breaker and the meter of a PCC relay, or a MESA-ESS style battery). Before
each request, and every ``step_s`` for events and unsolicited responses, the database
is refreshed from the device models; class 1/2/3 events come from the template's
``class`` and ``deadband``. Commands go through the model's ``write_point`` (which
clamps or refuses like hardware); a refusal answers the object with a status.

Faults (runner.set_fault): drop (close the link, on every connect while active),
refuse (stop listening), timeout (no answers), slow (delay_ms before answering),
garbage (a well-framed response whose application data is nonsense), stuck (values
stop updating), exception (every command answered HARDWARE_ERROR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from dnp3.core.enums import CommandStatus, ControlCode
from dnp3.core.flags import AnalogQuality, BinaryQuality, CounterQuality
from dnp3.database import Database
from dnp3.database.point import (
    AnalogInputConfig,
    AnalogOutputConfig,
    BinaryInputConfig,
    BinaryOutputConfig,
    CounterConfig,
    EventClass,
)
from dnp3.datalink.builder import build_unconfirmed_user_data
from dnp3.outstation.config import OutstationConfig, UnsolicitedConfig
from dnp3.outstation.handler import CommandResult
from dnp3.outstation.outstation import Outstation
from dnp3.outstation.tcp_runner import OutstationTcpRunner
from dnp3.transport.segmenter import Segmenter

from drivers.dnp3.connection import Dnp3Tcp
from drivers.dnp3.template import Dnp3Command, Dnp3Point, Dnp3Template
from gateway.model import PointValue
from sim_devices.faults import Fault, FaultKind

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVED_TYPES = ("dnp3_tcp",)


@dataclass
class Dnp3Unit:
    """One device served by an outstation: what the runner's fault and value calls see."""

    device_id: str
    template: Dnp3Template
    model: Any  # sim_devices.physics.base.SimModel
    faults: dict[FaultKind, Fault] = field(default_factory=dict)


def _q(kind: Any, flags: int | None) -> Any:
    """Quality flags for a database update; None = the default (ONLINE)."""
    return None if flags is None else kind(flags)


def _raw(value: PointValue, pt: Dnp3Point) -> float | bool:
    """A model value as the outstation's database holds it (value / scale, enum -> code)."""
    if pt.group in (1, 3, 10):
        return bool(value)
    if pt.enum is not None:
        for code, text in pt.enum.items():
            if text == value:
                return float(code)
        return -1.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) / pt.scale
    return 0.0


class _Handler:
    """Commands from the master, applied to the models (a dnp3py CommandHandler)."""

    def __init__(self, server: Dnp3Server) -> None:
        self.server = server

    def _crob(self, index: int, code: ControlCode, act: bool) -> CommandResult:
        refused = self.server.command_refusal()
        if refused is not None:
            return CommandResult(refused, "fault")
        targets = self.server.crobs.get(index, [])
        wire = int(code)
        for unit, point, cmd in targets:
            t, f = cmd.crob_for(True), cmd.crob_for(False)
            value = True if t and wire == t.wire else False if f and wire == f.wire else None
            if value is None:
                continue
            if act:
                return self.server.apply(unit, point, value)
            return CommandResult(CommandStatus.SUCCESS)
        return CommandResult(CommandStatus.NOT_SUPPORTED, f"no CROB {index} code {wire:#x}")

    def _ao(self, index: int, value: float, act: bool) -> CommandResult:
        refused = self.server.command_refusal()
        if refused is not None:
            return CommandResult(refused, "fault")
        target = self.server.aos.get(index)
        if target is None:
            return CommandResult(CommandStatus.NOT_SUPPORTED, f"no analog output {index}")
        unit, point, cmd = target
        if act:
            return self.server.apply(unit, point, value * cmd.scale)
        return CommandResult(CommandStatus.SUCCESS)

    def select_binary_output(self, index: int, code: ControlCode, count: int, on_time: int,
                             off_time: int) -> CommandResult:
        return self._crob(index, code, False)

    def operate_binary_output(self, index: int, code: ControlCode, count: int, on_time: int,
                              off_time: int, select_sequence: int) -> CommandResult:
        return self._crob(index, code, True)

    def direct_operate_binary_output(self, index: int, code: ControlCode, count: int,
                                     on_time: int, off_time: int) -> CommandResult:
        return self._crob(index, code, True)

    def select_analog_output(self, index: int, value: float) -> CommandResult:
        return self._ao(index, value, False)

    def operate_analog_output(self, index: int, value: float, select_sequence: int
                              ) -> CommandResult:
        return self._ao(index, value, True)

    def direct_operate_analog_output(self, index: int, value: float) -> CommandResult:
        return self._ao(index, value, True)


class _Garbage:
    """A response fragment whose objects are random bytes (header and sequence kept)."""

    def __init__(self, real: Any, rng: random.Random) -> None:
        self.sequence = real.sequence
        head = bytes(real.to_bytes()[:4])
        self._bytes = head + bytes([0xFE, 0xFE, 0x5B]) + bytes(rng.getrandbits(8)
                                                             for _ in range(12))

    def to_bytes(self) -> bytes:
        return self._bytes


class _SimOutstation(Outstation):
    """A dnp3py Outstation that refreshes its database from the models per request and
    applies the request-level faults."""

    server: Dnp3Server

    def process_request(self, data: bytes, *, peer: Any = None) -> list[Any]:
        faults = self.server.active_faults()
        if FaultKind.TIMEOUT in faults:
            return []
        self.server.refresh()
        out: list[Any] = super().process_request(data, peer=peer) if peer is not None \
            else super().process_request(data)
        if FaultKind.GARBAGE in faults and out:
            return [_Garbage(r, self.server.rng) for r in out]
        return out


class _Runner(OutstationTcpRunner):
    """Remembers the open connection (for unsolicited responses and the drop fault)."""

    server: Dnp3Server
    channel: Any = None

    async def _handle_connection(self, channel: Any) -> None:
        if FaultKind.DROP in self.server.active_faults():
            await channel.close()
            return
        slow = self.server.active_faults().get(FaultKind.SLOW)
        wrapped = _SlowChannel(channel, self.server) if slow is not None else channel
        self.channel = wrapped
        try:
            await super()._handle_connection(wrapped)
        finally:
            if self.channel is wrapped:
                self.channel = None


class _SlowChannel:
    def __init__(self, inner: Any, server: Dnp3Server) -> None:
        self.inner = inner
        self.server = server

    async def read(self, n: int) -> bytes:
        data: bytes = await self.inner.read(n)
        return data

    async def write_all(self, data: bytes) -> None:
        slow = self.server.active_faults().get(FaultKind.SLOW)
        if slow is not None:
            await asyncio.sleep(slow.params["delay_ms"] / 1000.0)
        await self.inner.write_all(data)

    async def close(self) -> None:
        await self.inner.close()


class Dnp3Server:
    """The outstation of one dnp3_tcp connection, with its fault switches."""

    def __init__(self, conn: Dnp3Tcp, units: list[Dnp3Unit], port: int | None = None,
                 host: str = HOST, step_s: float = 0.1) -> None:
        self.conn = conn
        self.host = host
        self.port = conn.port if port is None else port
        self.step_s = step_s
        self.by_device = {u.device_id: u for u in units}
        self.rng = random.Random(0)
        self.commands: list[tuple[str, str, PointValue]] = []  # (device, point, value) applied
        self.crobs: dict[int, list[tuple[Dnp3Unit, str, Dnp3Command]]] = {}
        self.aos: dict[int, tuple[Dnp3Unit, str, Dnp3Command]] = {}
        # (group, index) -> quality flags reported instead of ONLINE: a measurement whose
        # source is lost (COMM_LOST) or out of range, as a relay's own diagnostics say
        self.flags: dict[tuple[int, int], int] = {}
        self._points: list[tuple[Dnp3Unit, str, Dnp3Point]] = []
        db = Database()
        for unit in units:
            for name, pt in unit.template.points.items():
                if pt.group is not None and pt.index is not None:
                    self._add(db, pt)
                    self._points.append((unit, name, pt))
                cmd = pt.command
                if cmd is None:
                    continue
                if cmd.group == 12:
                    self.crobs.setdefault(cmd.index, []).append((unit, name, cmd))
                else:
                    self.aos[cmd.index] = (unit, name, cmd)
        self.outstation = _SimOutstation(
            config=OutstationConfig(address=conn.outstation_address,
                                    master_address=conn.master_address,
                                    select_timeout=conn.sbo_select_timeout_s,
                                    time_sync_required=False,
                                    unsolicited=UnsolicitedConfig(enabled=True)),
            database=db, handler=_Handler(self))  # type: ignore[arg-type]
        self.outstation.server = self
        self.refresh()
        self._runner: _Runner | None = None
        self._serve: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    @staticmethod
    def _add(db: Database, pt: Dnp3Point) -> None:
        assert pt.index is not None
        cls = EventClass(pt.event_class)
        if pt.group == 1 or pt.group == 3:
            db.add_binary_input(pt.index, BinaryInputConfig(event_class=cls))
        elif pt.group == 10:
            db.add_binary_output(pt.index, BinaryOutputConfig(event_class=cls))
        elif pt.group == 20:
            db.add_counter(pt.index, CounterConfig(event_class=cls))
        elif pt.group == 30:
            db.add_analog_input(pt.index, AnalogInputConfig(event_class=cls,
                                                            deadband=pt.deadband))
        elif pt.group == 40:
            db.add_analog_output(pt.index, AnalogOutputConfig(track_commands=False))

    # -- data -----------------------------------------------------------------------------

    def active_faults(self) -> dict[FaultKind, Fault]:
        out: dict[FaultKind, Fault] = {}
        for unit in self.by_device.values():
            out.update(unit.faults)
        return out

    def refresh(self) -> None:
        """Copy every model's points into the database (events where they changed)."""
        db = self.outstation.database
        stuck = {d for d, u in self.by_device.items() if FaultKind.STUCK in u.faults}
        values: dict[str, dict[str, PointValue]] = {}
        for unit, name, pt in self._points:
            if unit.device_id in stuck:
                continue
            vals = values.get(unit.device_id)
            if vals is None:
                vals = values[unit.device_id] = unit.model.read_points()
            value = vals.get(name)
            if value is None or pt.index is None:
                continue
            raw = _raw(value, pt)
            flags = self.flags.get((pt.group or 0, pt.index))
            if pt.group in (1, 3):
                db.update_binary_input(pt.index, bool(raw), _q(BinaryQuality, flags))
            elif pt.group == 10:
                db.update_binary_output(pt.index, bool(raw), _q(BinaryQuality, flags))
            elif pt.group == 20:
                db.update_counter(pt.index, max(0, int(raw)), _q(CounterQuality, flags))
            elif pt.group == 30:
                db.update_analog_input(pt.index, float(raw), _q(AnalogQuality, flags))
            elif pt.group == 40:
                db.update_analog_output(pt.index, float(raw), _q(AnalogQuality, flags))

    def apply(self, unit: Dnp3Unit, point: str, value: PointValue) -> CommandResult:
        """A command reaches the device model; its refusal is the object's status."""
        try:
            unit.model.write_point(point, value)
        except ValueError as exc:
            log.info("%s: refused %s = %r: %s", unit.device_id, point, value, exc)
            return CommandResult(CommandStatus.OUT_OF_RANGE, str(exc))
        unit.model.note_comm_write(time.monotonic())
        self.commands.append((unit.device_id, point, value))
        self.refresh()
        return CommandResult(CommandStatus.SUCCESS)

    def command_refusal(self) -> CommandStatus | None:
        return CommandStatus.HARDWARE_ERROR if FaultKind.EXCEPTION in self.active_faults() \
            else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"dnp3 sim {self.conn.id}")

    async def _listen(self) -> None:
        runner = _Runner(self.outstation, host=self.host, port=self.port)
        runner.server = self
        self._runner = runner
        self._serve = asyncio.create_task(runner.run(), name=f"dnp3 outstation {self.conn.id}")
        for _ in range(200):  # bounded: the listener binds within a few loop turns
            if runner.local_address is not None or self._serve.done():
                break
            await asyncio.sleep(0.005)
        if self._serve.done():
            self._serve.result()  # raises the bind error
        addr = runner.local_address
        if addr is None:
            raise OSError(f"DNP3 outstation {self.conn.id} did not start listening")
        self.port = addr[1]

    async def _unlisten(self) -> None:
        runner, serve = self._runner, self._serve
        self._runner = self._serve = None
        if runner is not None:
            await runner.stop()
        if serve is not None:
            serve.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serve

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self._unlisten()

    async def apply_faults(self) -> None:
        faults = self.active_faults()
        if FaultKind.REFUSE in faults and self._runner is not None:
            await self._unlisten()
        elif FaultKind.REFUSE not in faults and self._runner is None:
            await self._listen()
        if FaultKind.DROP in faults:
            await self.drop()

    async def drop(self) -> None:
        """Close the current master connection (the link is lost)."""
        runner = self._runner
        channel = runner.channel if runner is not None else None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _tick(self) -> None:
        """Refresh the database and send unsolicited responses the master enabled."""
        segmenter = Segmenter()
        while True:
            await asyncio.sleep(self.step_s)
            try:
                faults = self.active_faults()
                if FaultKind.STUCK in faults and len(faults) == 1:
                    continue
                self.refresh()
                runner = self._runner
                channel = runner.channel if runner is not None else None
                if channel is None or FaultKind.TIMEOUT in faults:
                    continue
                response = self.outstation.generate_unsolicited()
                if response is None:
                    continue
                for seg in segmenter.segment(response.to_bytes()):
                    frame = build_unconfirmed_user_data(
                        destination=self.conn.master_address,
                        source=self.conn.outstation_address, dir_from_master=False,
                        user_data=seg.to_bytes())
                    await channel.write_all(frame.to_bytes())
            except Exception as exc:  # a closed socket mid-write: the next tick tries again
                log.debug("dnp3 sim %s tick: %r", self.conn.id, exc)


def attach_dnp3(runner: Any, overrides: dict[str, int], host: str,
                templates: dict[str, Any] | None) -> None:
    """Serve the DNP3 devices of ``runner``'s site (a SimRunner) on outstations driven by
    its physics: each dnp3_tcp connection becomes an endpoint, each device an image."""

    cfg = runner.cfg
    models = runner.site.models
    by_conn: dict[str, list[Dnp3Unit]] = {}
    library = cfg.template_library()  # built-in and the site's own templates
    for dev in cfg.devices:
        conn = cfg.connection(dev.connection)
        if conn.type not in SERVED_TYPES or not dev.enabled:
            continue
        model = models.get(dev.id)
        if model is None:
            runner.skipped[dev.id] = "no physics model"
            continue
        tpl = (templates or {}).get(dev.template) or library.load(dev.template)
        if not isinstance(tpl, Dnp3Template):
            runner.skipped[dev.id] = f"template '{dev.template}' is not a DNP3 template"
            continue
        runner.skipped.pop(dev.id, None)
        unit = Dnp3Unit(dev.id, tpl, model)
        runner.images[dev.id] = unit
        by_conn.setdefault(conn.id, []).append(unit)
    for conn_id, units in by_conn.items():
        conn = cfg.connection(conn_id)
        assert isinstance(conn, Dnp3Tcp)
        runner.endpoints[conn_id] = Dnp3Server(conn, units, overrides.get(conn_id), host)
