"""Simulated CAN nodes: a site's CAN devices send their periodic frames and obey command
frames, driven by the same SimSite physics as the Modbus simulators.

A node is generic over its template (code per protocol, not per device): each periodic
message the template reads is encoded from the model's standard points, inverting the
template's mapping. Signals no point maps (a BMS's voltage limits, a charger's DC
voltage) come from small per-nature "extras". Command frames are decoded and written
through the site's write path (clamped, watchdog re-armed), except a BMS's current-limit
request, which the BMS node holds itself: it reports min(own limit, request).

Faults (same kinds as the Modbus simulators): ``timeout`` = the node goes silent,
``stuck`` = frames repeat their last payload, ``garbage`` = truncated frames (and garbled
slcan lines on a pty), ``drop``/``refuse`` = the link goes (the pty is closed and its
path removed) until cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from cantools.database.can import Message, Signal

from drivers.can.connection import CanConnection
from drivers.can.dbc import Payload, clamp_to_signal, signal_of
from drivers.can.link import frame_key
from drivers.can.template import CanTemplate
from gateway.config.models import Device, SiteConfig
from gateway.model import NATURES, Kind, Nature, PointValue
from sim_devices.can_ports import Port, make_port
from sim_devices.faults import ENDPOINT_KINDS, Fault, FaultKind, make_fault

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 1.0  # for a read message without a DBC cycle time
LFP_CHARGE_V, LFP_DISCHARGE_V = 3.55, 2.90  # per-cell voltage limits a Pylontech reports
EV_PACK_V = 400.0
CAN_FAULTS = {FaultKind.TIMEOUT, FaultKind.STUCK, FaultKind.GARBAGE, *ENDPOINT_KINDS}


class CanNode:
    """One simulated device on a CAN bus."""

    def __init__(self, device: Device, template: CanTemplate, model: Any, site: Any) -> None:
        self.device = device
        self.template = template
        self.model = model
        self.site = site
        self.offset = template.id_stride * max(device.unit_id - 1, 0)
        specs = NATURES[template.nature]
        self.kinds = {n: specs[n].kind for n in template.points}
        names = {p.message for p in template.points.values() if p.message}
        self.periodic = [m for m in template.database.messages if m.name in names]
        self.commands = {template.message(p.command.message).name
                         for p in template.points.values() if p.command}
        self.next_due = dict.fromkeys((m.name for m in self.periodic), 0.0)
        self.last_payload: dict[str, bytes] = {}
        self.faults: dict[FaultKind, Fault] = {}
        self.silent_since: float | None = None
        self.received: list[tuple[str, dict[str, float]]] = []  # commands, for tests
        self.period_scale = 1.0
        self._rng = random.Random(device.id)

    def arbitration_id(self, msg: Message) -> int:
        return msg.frame_id + self.offset

    def command_keys(self) -> dict[int, Message]:
        out = {}
        for name in self.commands:
            msg = self.template.message(name)
            out[frame_key(self.arbitration_id(msg), msg.is_extended_frame)] = msg
        return out

    def period_s(self, msg: Message) -> float:
        cycle = msg.cycle_time / 1000.0 if msg.cycle_time else DEFAULT_PERIOD_S
        return max(cycle * self.period_scale, 0.005)

    # -- periodic frames --------------------------------------------------------------

    def points(self) -> dict[str, PointValue]:
        values: dict[str, PointValue] = self.model.read_points()
        return values

    def extras(self, values: dict[str, PointValue]) -> dict[str, float]:
        """Signals no point maps (per nature); empty by default."""
        return {}

    def encode(self, msg: Message, values: dict[str, PointValue]) -> bytes:
        """The payload of ``msg`` showing ``values`` (the model's standard points)."""
        sig_values: dict[str, float] = {s.name: 0.0 for s in msg.signals}
        for name, pt in self.template.points.items():
            if pt.message != msg.name or name not in values:
                continue
            value = values[name]
            kind = self.kinds[name]
            if pt.flags is not None:
                bits = int(value)
                for i, flag in enumerate(pt.flags):
                    sig_values[flag] = float((bits >> i) & 1)
            elif pt.signal is not None:
                sig = signal_of(msg, pt.signal)
                assert sig is not None
                sig_values[pt.signal] = _physical(sig, pt.scale, pt.invert, pt.enum, kind, value)
        sig_values.update({k: v for k, v in self.extras(values).items() if k in sig_values})
        for sig in msg.signals:
            sig_values[sig.name] = clamp_to_signal(sig, sig_values[sig.name])
        return bytes(msg.encode(sig_values, scaling=True, strict=False))

    def due_frames(self, now: float) -> list[tuple[int, bytes, bool]]:
        """Frames whose period elapsed (all of them on the first call)."""
        if FaultKind.TIMEOUT in self.faults:
            return []
        due = [m for m in self.periodic if now >= self.next_due[m.name]]
        if not due:
            return []
        values = self.points() if FaultKind.STUCK not in self.faults else {}
        out = []
        for msg in due:
            self.next_due[msg.name] = max(self.next_due[msg.name] + self.period_s(msg),
                                          now + 0.5 * self.period_s(msg))
            out.append(self._frame(msg, values))
        return out

    def _frame(self, msg: Message, values: dict[str, PointValue]) -> tuple[int, bytes, bool]:
        if FaultKind.STUCK in self.faults and msg.name in self.last_payload:
            data = self.last_payload[msg.name]
        else:
            data = self.encode(msg, values or self.points())
            self.last_payload[msg.name] = data
        if FaultKind.GARBAGE in self.faults:
            data = data[:self._rng.randrange(0, max(msg.length, 1))]  # short: malformed
        return self.arbitration_id(msg), data, msg.is_extended_frame

    def frames_now(self, names: set[str]) -> list[tuple[int, bytes, bool]]:
        """The named periodic messages, now (after a command: confirm it at once)."""
        if FaultKind.TIMEOUT in self.faults:
            return []
        values = self.points()
        return [self._frame(m, values) for m in self.periodic if m.name in names]

    # -- commands ---------------------------------------------------------------------

    def on_command(self, msg: Message, data: Payload) -> set[str]:
        """Apply a command frame; returns the periodic messages that show its effect."""
        try:
            decoded = msg.decode(bytes(data), decode_choices=False, scaling=True)
        except Exception as exc:  # a malformed command: a real node ignores it
            log.info("%s: bad %s frame ignored: %s", self.device.id, msg.name, exc)
            return set()
        assert isinstance(decoded, dict)
        sig_values = {k: float(v) for k, v in decoded.items() if isinstance(v, int | float)}
        self.received.append((msg.name, sig_values))
        shows: set[str] = set()
        for name, pt in self.template.points.items():
            cmd = pt.command
            if cmd is None or cmd.message != msg.name or cmd.signal not in sig_values:
                continue
            phys = sig_values[cmd.signal]
            value: PointValue = ((phys != 0) != pt.invert if self.kinds[name] is Kind.BOOL
                                 else phys * cmd.scale)
            try:
                self.apply(name, value)
            except ValueError as exc:
                log.info("%s: command %s=%r refused: %s", self.device.id, name, value, exc)
            if pt.message:
                shows.add(pt.message)
        return shows

    def apply(self, point: str, value: PointValue) -> None:
        write = getattr(self.site, "write", None)
        if write is not None:
            write(self.device.id, point, value)
        else:
            self.model.write_point(point, value)
            self.model.note_comm_write(time.monotonic())


class BmsNode(CanNode):
    """A Pylontech-style BMS: limits, flags and voltage limits from the pack; holds the
    gateway's current-limit request and reports min(own limit, request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requested: dict[str, float] = {}  # point -> limit the gateway asked for

    def points(self) -> dict[str, PointValue]:
        values = super().points()
        for point, cap in self.requested.items():
            own = values.get(point)
            if isinstance(own, int | float):
                values[point] = min(float(own), cap)
        return values

    def apply(self, point: str, value: PointValue) -> None:
        if point in ("i_charge_max_a", "i_discharge_max_a"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{point} must be a current >= 0 A, found {value!r}")
            self.requested[point] = float(value)
            return
        super().apply(point, value)

    def extras(self, values: dict[str, PointValue]) -> dict[str, float]:
        pack = getattr(self.model, "pack", None)
        n = getattr(pack, "n_series", 16)
        raw = int(getattr(pack, "alarms", lambda: 0)())
        ich, idis = values.get("i_charge_max_a", 0.0), values.get("i_discharge_max_a", 0.0)
        alarms = self.template.points.get("alarms")
        cleared = dict.fromkeys(alarms.flags or [], 0.0) if alarms else {}
        return {**cleared,  # the pack's bits are not Pylontech's: map them, clear the rest
            "ChargeVoltageLimit": n * LFP_CHARGE_V, "DischargeVoltageLimit": n * LFP_DISCHARGE_V,
            "AvgTemperature": float(getattr(pack, "temp_c", 25.0)),
            # the pack's own alarm bits (sim_devices.physics.battery) as Pylontech flags
            "AlarmHighTemp": float(bool(raw & 1)), "ProtectOverTemp": float(bool(raw & 2)),
            "AlarmCellLowVoltage": float(bool(raw & 4)),
            "AlarmCellHighVoltage": float(bool(raw & 8)),
            "AlarmInternalComm": float(bool(raw & 16)),
            "ModuleCount": float(max(1, math.ceil(getattr(pack, "capacity_rated_kwh", 5) / 4.8))),
            "MarkerP": float(ord("P")), "MarkerN": float(ord("N")),
            "ChargeEnable": float(isinstance(ich, float) and ich > 0),
            "DischargeEnable": float(isinstance(idis, float) and idis > 0),
        }


class ChargerNode(CanNode):
    """A DC charger: DC voltage/current and status flags from the EVSE model."""

    def extras(self, values: dict[str, PointValue]) -> dict[str, float]:
        connected = bool(values.get("connected"))
        v = EV_PACK_V if connected else 0.0
        p = values.get("p_kw", 0.0)
        p_kw = float(p) if isinstance(p, int | float) else 0.0
        return {"OutputVoltage": v, "OutputCurrent": p_kw * 1000.0 / v if v else 0.0,
                "CommTimeout": float(bool(getattr(self.model, "watchdog_expired", False)))}


NODE_TYPES: dict[Nature, type[CanNode]] = {Nature.BMS: BmsNode, Nature.EVSE: ChargerNode}


def _physical(sig: Signal, scale: float, invert: bool, enum: dict[int, str] | None,
              kind: Kind, value: PointValue) -> float:
    """The inverse of the driver's point decoder: point value -> physical signal value."""
    if kind is Kind.BOOL:
        return float(bool(value) != invert)
    if kind is Kind.STR:
        table = enum or {int(k): str(v) for k, v in (sig.choices or {}).items()}
        for raw, text in table.items():
            if text == value:
                return float(raw)  # enum keys are the signal's physical value
        return 0.0
    if isinstance(value, str):
        return 0.0
    return float(value) / scale


class CanBusSim:
    """The simulated nodes of one CAN connection: one port, one task that sends the due
    frames and checks the nodes' communication watchdogs. Quacks like the runner's
    endpoint servers (start/stop/by_device/apply_faults), so SimRunner serves it, switches
    its faults and checks its models' watchdogs without knowing CAN."""

    def __init__(self, conn: CanConnection, nodes: list[CanNode]) -> None:
        self.conn = conn
        self.port_obj: Port = make_port(conn)
        self.by_device: dict[str, CanNode] = {n.device.id: n for n in nodes}
        self._commands: dict[int, tuple[CanNode, Message]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        for node in nodes:
            for key, msg in node.command_keys().items():
                self._commands[key] = (node, msg)
                self.port_obj.subscribe(key, self._on_command_cb(key))

    @property
    def port(self) -> int:
        return 0  # no TCP port: the gateway reaches this bus at ``channel``

    @property
    def channel(self) -> str:
        return self.conn.channel

    def set_period_scale(self, value: float) -> None:
        """Speed up (< 1) or slow down every node's DBC cycle times (tests)."""
        if not value > 0:
            raise ValueError(f"period_scale must be > 0, found {value}")
        for node in self.by_device.values():
            node.period_scale = value
        self._wake.set()

    def _on_command_cb(self, key: int) -> Callable[[Payload, float], None]:
        def handle(data: Payload, _ts: float) -> None:
            node, msg = self._commands[key]
            shows = node.on_command(msg, data)
            for arb, payload, ext in node.frames_now(shows) if shows else []:
                asyncio.get_running_loop().create_task(self._send(node, arb, payload, ext))
        return handle

    async def _send(self, node: CanNode, arb: int, data: bytes, ext: bool) -> None:
        try:
            await self.port_obj.send(arb, data, ext)
        except Exception as exc:  # the bus went away: keep simulating
            log.debug("%s: frame not sent: %s", node.device.id, exc)

    async def start(self) -> None:
        if not self._link_faulted():
            await self.port_obj.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sim can {self.conn.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.port_obj.stop()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for dev_id, node in self.by_device.items():
                if FaultKind.GARBAGE in node.faults and node._rng.random() < 0.5:
                    self.port_obj.write_raw(b"t1G#garbage\r")  # no slcan parser accepts it
                for arb, data, ext in node.due_frames(now):
                    await self._send(node, arb, data, ext)
                check = getattr(node.model, "check_watchdog", None)
                if check is not None and check(now):
                    log.warning("%s: no command within its watchdog: safe defaults", dev_id)
            nxt = min((t for n in self.by_device.values() for t in n.next_due.values()),
                      default=now + 1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(nxt - time.monotonic(), 0.002), 0.5)):
                    await self._wake.wait()

    # -- faults (node.faults is set by the runner, or by set_fault below) ---------------

    def _link_faulted(self) -> bool:
        return any(k in ENDPOINT_KINDS for n in self.by_device.values() for k in n.faults)

    async def apply_faults(self) -> None:
        """Make the port match the nodes' faults: closed while any has drop/refuse."""
        for node in self.by_device.values():
            for kind in node.faults:
                if kind not in CAN_FAULTS:
                    raise ValueError(f"fault '{kind}' does not apply to a CAN device (CAN: "
                                     f"{', '.join(sorted(str(k) for k in CAN_FAULTS))})")
            if FaultKind.TIMEOUT not in node.faults and node.silent_since is not None:
                node.next_due = dict.fromkeys(node.next_due, 0.0)  # talk again at once
            node.silent_since = (node.silent_since or time.monotonic()
                                 if FaultKind.TIMEOUT in node.faults else None)
        if self._link_faulted():
            if self.port_obj.up:
                await self.port_obj.stop()
        elif not self.port_obj.up and self._task is not None:
            await self.port_obj.start()
        self._wake.set()

    async def set_fault(self, device_id: str, kind: str | FaultKind, **params: Any) -> Fault:
        """Standalone use (without SimRunner): show a fault until cleared."""
        fault = make_fault(kind, **params)
        self.by_device[device_id].faults[fault.kind] = fault
        try:
            await self.apply_faults()
        except ValueError:
            self.by_device[device_id].faults.pop(fault.kind, None)
            raise
        return fault

    async def clear_fault(self, device_id: str, kind: str | FaultKind | None = None) -> None:
        faults = self.by_device[device_id].faults
        if kind is None:
            faults.clear()
        else:
            faults.pop(make_fault(kind).kind, None)
        await self.apply_faults()


def build_can_buses(cfg: SiteConfig, site: Any, templates: dict[str, Any] | None = None,
                    skipped: dict[str, str] | None = None) -> dict[str, CanBusSim]:
    """One CanBusSim per CAN connection of ``cfg`` with a node per enabled CAN device;
    devices that cannot be simulated go to ``skipped`` (id -> why)."""
    by_conn: dict[str, list[CanNode]] = {}
    conns: dict[str, CanConnection] = {}
    library = cfg.template_library()  # built-in and the site's own templates
    for dev in cfg.devices:
        conn = cfg.connection(dev.connection)
        if not isinstance(conn, CanConnection) or not dev.enabled:
            continue
        model = site.models.get(dev.id)
        tpl = (templates or {}).get(dev.template) or library.load(dev.template)
        if model is None or not isinstance(tpl, CanTemplate):
            if skipped is not None:
                skipped[dev.id] = ("no physics model" if model is None
                                   else f"template '{dev.template}' is not a CAN template")
            continue
        if skipped is not None:
            skipped.pop(dev.id, None)
        by_conn.setdefault(conn.id, []).append(
            NODE_TYPES.get(dev.nature, CanNode)(dev, tpl, model, site))
        conns[conn.id] = conn
    return {cid: CanBusSim(conns[cid], nodes) for cid, nodes in by_conn.items()}


def attach_can(runner: Any, templates: dict[str, Any] | None = None) -> None:
    """Serve the CAN devices of ``runner``'s site (a SimRunner) as endpoints of it."""
    for conn_id, bus in build_can_buses(runner.cfg, runner.site, templates,
                                        runner.skipped).items():
        runner.endpoints[conn_id] = bus
        runner.images.update(bus.by_device)
