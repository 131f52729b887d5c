"""One CAN device: latest periodic frames decoded into points; command frames written.

Frames are stored as they arrive (bytes and receive time, nothing decoded); ``read()``
decodes the latest payload of each message with compiled decoders. Staleness is per
device: if any message the polled points need is older than the connection's
``frame_timeout_s``, ``read()`` raises DeviceTimeout naming the silent frames, so the
device goes offline (a BMS whose limits frame stopped is not to be trusted with the rest
either). A frame shorter than its DBC length is malformed: counted, logged once, ignored
(the last good payload ages out instead); a longer one is read by its leading bytes (BMSs
pad short messages to 8 bytes). A decoded value that cannot be true (a "not
available"/"error" bit pattern, outside the DBC range: drivers.can.validity) is returned
as ``Invalid(value, why)``, logged once when it turns invalid and once when it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cantools.database.can import Message, Signal

from drivers.base import DeviceTimeout, IOStats, LinkedDeviceIO, WriteError
from drivers.can.codegen import MessageDecoder, compile_message
from drivers.can.dbc import Payload, compile_signal, resolution, signal_of
from drivers.can.link import CanLink, frame_key
from drivers.can.template import CanPoint, CanTemplate
from gateway.model import NATURES, Invalid, Kind, PointValue

log = logging.getLogger("drivers.can")

@dataclass
class Slot:
    """The latest payload of one periodic message of one device."""

    message: Message
    arbitration_id: int
    data: Payload | None = None
    ts: float = 0.0
    frames: int = 0  # good frames received (diagnostics; the flood tests count on it)
    malformed: int = 0
    waiting: int = 0  # tasks waiting for the next frame (then ``event`` is pulsed)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_frame(self) -> None:
        """Wait for the next good frame of this message."""
        self.waiting += 1
        try:
            await self.event.wait()
        finally:
            self.waiting -= 1

    def __post_init__(self) -> None:
        self.length = self.message.length

    def on_frame(self, data: Payload, ts: float) -> None:
        if len(data) < self.length:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("%s (0x%X): %d-byte frame, the DBC says %d; ignored (counted "
                            "from now on)", self.message.name, self.arbitration_id, len(data),
                            self.message.length)
            return
        self.data = data
        self.ts = ts
        self.frames += 1
        if self.waiting:
            self.event.set()  # wakes the waiters now; they re-check data/ts themselves
            self.event.clear()


def point_decoder(msg: Message, pt: CanPoint, kind: Kind, name: str = "value"
                  ) -> Callable[[Payload], PointValue | Invalid | None]:
    """One point's engineering value from a payload (scale, invert, enum, kind applied)."""
    dec = compile_message(msg, [(name, pt, kind)])
    return lambda data: dec(data)[name]


class CanDeviceIO(LinkedDeviceIO):
    """Points of one device from the frames it sends; setpoints as command frames."""

    def __init__(self, device_id: str, unit: int, template: CanTemplate, link: CanLink,
                 points: Sequence[str] | None = None,
                 on_close: Callable[[CanDeviceIO], bool] | None = None) -> None:
        self.device_id = device_id
        self.unit = unit
        self.template = template
        self.link = link
        self.endpoint = link.key
        self.stats = IOStats()
        self.frame_timeout_s = link.conn.frame_timeout_s
        self._on_close = on_close
        self._offset = template.id_stride * max(unit - 1, 0)
        names = self.chosen_points(device_id, template.points, points)
        specs = NATURES[template.nature]
        self.slots: dict[str, Slot] = {}
        per_message: dict[str, list[tuple[str, CanPoint, Kind]]] = {}
        for name in names:
            pt = template.points[name]
            if pt.message is None:
                continue  # write-only
            self._slot(pt.message)
            per_message.setdefault(pt.message, []).append((name, pt, specs[name].kind))
        self.polled = tuple(n for pts in per_message.values() for n, _, _ in pts)
        # one generated decoder per message (drivers.can.codegen): the hot path
        self._decoders: dict[str, MessageDecoder] = {
            m: compile_message(self.slots[m].message, pts) for m, pts in per_message.items()}
        self._handlers = [(self._key(s), s.on_frame) for s in self.slots.values()]
        for key, handler in self._handlers:
            link.subscribe(key, handler)
        self._sent: dict[tuple[str, str], float] = {}  # (message, signal) -> last sent value
        self.invalid: dict[str, str] = {}  # point -> why, while its value cannot be true

    def _slot(self, message: str) -> Slot:
        slot = self.slots.get(message)
        if slot is None:
            msg = self.template.message(message)
            slot = Slot(msg, msg.frame_id + self._offset)
            self.slots[message] = slot
        return slot

    def _key(self, slot: Slot) -> int:
        return frame_key(slot.arbitration_id, slot.message.is_extended_frame)

    # ---- read -----------------------------------------------------------------------

    async def read(self) -> dict[str, PointValue | Invalid | None]:
        self.stats.requests += 1
        try:
            await self.link.ensure_open()
            await self._first_frames()
            self._check_fresh()
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            raise
        out: dict[str, PointValue | Invalid | None] = {}
        slots = self.slots
        for message, dec in self._decoders.items():
            data = slots[message].data
            if data is not None:
                out.update(dec(data))
        self._note_invalid(out)
        self._diagnostics()
        return out

    def _diagnostics(self) -> None:
        """Frame counters of this device and its bus, for diagnostics (``stats.extra``)."""
        link = self.link
        self.stats.extra.update({
            "frames": {s.message.name: s.frames for s in self.slots.values()},
            "malformed": self.malformed, "invalid": dict(self.invalid),
            "bus": link.counters, "bus_dropped_by_id": link.dropped_ids})

    def _note_invalid(self, values: dict[str, PointValue | Invalid | None]) -> None:
        """Log a point turning invalid once per episode, and its recovery once."""
        invalid = self.invalid
        for name, value in values.items():
            if isinstance(value, Invalid):
                if name not in invalid:
                    log.warning("%s: %s = %s is %s: marked invalid", self.device_id, name,
                                _show(value.raw), value.why)
                invalid[name] = value.why
            elif name in invalid:
                del invalid[name]
                log.info("%s: %s = %s is valid again", self.device_id, name, _show(value))

    async def _first_frames(self) -> None:
        """Right after the bus opens, wait (up to the frame timeout) for frames never seen."""
        opened = self.link.opened_at or time.monotonic()
        for slot in self.slots.values():
            if slot.data is not None and slot.ts >= opened:
                continue
            left = opened + self.frame_timeout_s - time.monotonic()
            if left <= 0:
                continue
            try:
                async with asyncio.timeout(left):
                    while slot.data is None or slot.ts < opened:
                        await slot.next_frame()
            except TimeoutError:
                pass

    def _check_fresh(self) -> None:
        now = time.monotonic()
        silent = []
        for slot in self.slots.values():
            if slot.data is None:
                silent.append(f"{slot.message.name} (0x{slot.arbitration_id:X}) never seen")
            elif now - slot.ts > self.frame_timeout_s:
                silent.append(f"{slot.message.name} (0x{slot.arbitration_id:X}) "
                              f"{now - slot.ts:.1f} s old")
        if silent:
            self.stats.timeouts += 1
            raise DeviceTimeout(f"{self.device_id}: no fresh frame within "
                                f"{self.frame_timeout_s:g} s: {'; '.join(silent)}")

    def decode(self, message: str) -> dict[str, PointValue | Invalid | None]:
        """The points carried by ``message``, from its latest payload (no I/O, no
        freshness check; benchmarks and diagnostics)."""
        data = self.slots[message].data
        dec = self._decoders.get(message)
        return {} if data is None or dec is None else dec(data)

    @property
    def malformed(self) -> int:
        return sum(s.malformed for s in self.slots.values())

    # ---- write ----------------------------------------------------------------------

    def _command_point(self, point: str) -> CanPoint:
        return self.writable_point(self.template.points, self.template.writable, point)

    def _physical(self, point: str, pt: CanPoint, sig: Signal, value: PointValue) -> float:
        assert pt.command is not None
        if isinstance(value, bool):
            return float(value != pt.invert)
        if isinstance(value, str) or not math.isfinite(float(value)):
            raise WriteError(f"{self.device_id}: '{point}' needs a number, found {value!r}")
        phys = float(value) / pt.command.scale
        lo, hi = sig.minimum, sig.maximum
        if (lo is not None and phys < lo - 1e-9) or (hi is not None and phys > hi + 1e-9):
            unit = f" {sig.unit}" if sig.unit else ""
            raise WriteError(f"{self.device_id}: {value!r} for '{point}' is outside what "
                             f"{pt.command.message}.{sig.name} carries ({lo:g}..{hi:g}{unit})")
        return phys

    def _frame_values(self, msg: Message, point: str, phys: float) -> dict[str, float]:
        """Every signal of a command frame: the new value; for the others what we sent
        last, else what the device reports now (points verified 'equal'), else no
        restriction for a limit ('at_most': the signal's maximum), else the DBC's initial
        value. WriteError when the device's report of another signal is invalid and we
        never sent it: the frame would carry a guess."""
        pt = self.template.points[point]
        assert pt.command is not None
        current: dict[str, float] = {}
        unknown: dict[str, str] = {}  # signal -> why the device's report of it is unusable
        for name, other in self.template.points.items():
            cmd = other.command
            if cmd is None or cmd.message != msg.name or name == point:
                continue
            if other.verify == "at_most":
                sig = signal_of(msg, cmd.signal)
                if sig is not None and sig.maximum is not None:
                    current[cmd.signal] = float(sig.maximum)
                continue
            slot = self.slots.get(other.message) if other.message else None
            if slot is not None and slot.data is not None and other.signal is not None:
                sig = signal_of(slot.message, other.signal)
                kind = NATURES[self.template.nature][name].kind
                shown = point_decoder(slot.message, other, kind)(slot.data)
                if isinstance(shown, Invalid):  # never echo a value that cannot be true
                    unknown[cmd.signal] = (f"'{name}', whose reported value "
                                           f"{_show(shown.raw)} is invalid ({shown.why}); "
                                           f"write '{name}' first")
                elif sig is not None:
                    reported = compile_signal(slot.message, sig)(slot.data)
                    if NATURES[self.template.nature][name].kind is Kind.BOOL:
                        reported = float((reported != 0) != other.invert)
                    else:
                        reported = reported * other.scale / cmd.scale
                    current[cmd.signal] = reported
        out: dict[str, float] = {}
        for sig in msg.signals:
            if sig.name == pt.command.signal:
                out[sig.name] = phys
            elif (msg.name, sig.name) in self._sent:
                out[sig.name] = self._sent[(msg.name, sig.name)]
            elif sig.name in current:
                out[sig.name] = current[sig.name]
            elif sig.name in unknown:
                raise WriteError(f"{self.device_id}: '{point}' not sent: {msg.name} also "
                                 f"carries {unknown[sig.name]} (a guess could switch "
                                 f"something nobody asked for)")
            else:
                out[sig.name] = _initial(sig)
        return out

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        pt = self._command_point(point)
        assert pt.command is not None
        msg = self.template.message(pt.command.message)
        sig = signal_of(msg, pt.command.signal)
        assert sig is not None
        phys = self._physical(point, pt, sig, value)
        values = self._frame_values(msg, point, phys)
        try:
            data = msg.encode(values, scaling=True, strict=True)
        except Exception as exc:  # cantools EncodeError: a value out of its signal's range
            raise WriteError(f"{self.device_id}: cannot encode {msg.name} for '{point}' = "
                             f"{value!r}: {exc}") from None
        sent_phys = compile_signal(msg, sig)(data)
        for name, v in values.items():
            self._sent[(msg.name, name)] = v
        self._sent[(msg.name, sig.name)] = sent_phys
        sent_at = time.monotonic()
        await self.link.send(msg.frame_id + self._offset, data, msg.is_extended_frame)
        if pt.message is None or pt.verify == "none":
            return None
        expected = float(value) if isinstance(value, bool) else sent_phys * pt.command.scale
        return await self._verify(point, pt, expected, sent_at, sig)

    async def _verify(self, point: str, pt: CanPoint, expected: float, sent_at: float,
                      sig: Signal) -> PointValue | None:
        """Wait for frames sent after the command until one shows it applied."""
        assert pt.message is not None
        slot = self.slots.get(pt.message) or self._slot(pt.message)
        dec = point_decoder(slot.message, pt, NATURES[self.template.nature][point].kind)
        tol = resolution(sig) * abs(pt.command.scale if pt.command else 1.0) / 2 + 1e-9
        got: PointValue | Invalid | None = None
        try:
            async with asyncio.timeout(self.frame_timeout_s):
                while True:
                    if slot.data is not None and slot.ts > sent_at:
                        got = dec(slot.data)
                        if not isinstance(got, Invalid) and _applied(got, expected,
                                                                     pt.verify, tol):
                            return got
                    await slot.next_frame()
        except TimeoutError:
            pass
        if got is None:
            raise WriteError(f"{self.device_id}: sent '{point}' = {expected:g} but no "
                             f"{slot.message.name} frame confirmed it within "
                             f"{self.frame_timeout_s:g} s")
        if isinstance(got, Invalid):
            raise WriteError(f"{self.device_id}: sent '{point}' = {expected:g} but the device "
                             f"reports {_show(got.raw)}, which is {got.why}")
        how = "at most" if pt.verify == "at_most" else ""
        raise WriteError(f"{self.device_id}: sent '{point}' = {expected:g} but the device "
                         f"reports {got!r} (expected {how} {expected:g})".replace("  ", " "))

    async def close(self) -> None:
        self._attached = False  # a write now is refused, not sent on a link being closed
        for key, handler in self._handlers:
            self.link.unsubscribe(key, handler)
        on_close, self._on_close = self._on_close, None
        if on_close is not None and on_close(self):  # the last device on the link
            await self.link.close()


def _show(value: PointValue | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _applied(got: PointValue | None, expected: float, verify: str, tol: float) -> bool:
    if got is None or isinstance(got, str):
        return False
    if isinstance(got, bool):
        return got == bool(expected)
    if verify == "at_most":
        return float(got) <= expected + tol
    return abs(float(got) - expected) <= tol


def _initial(sig: Signal) -> float:
    """A signal's DBC initial value (physical), or the physical value of raw 0."""
    raw = getattr(sig, "raw_initial", None)
    return float(raw if raw is not None else 0) * float(sig.scale) + float(sig.offset)
