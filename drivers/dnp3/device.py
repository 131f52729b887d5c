"""One device behind a DNP3 link: its points from the link's latest data, and commands.

A point the outstation flags as not trustworthy (not ONLINE, or COMM_LOST, RESTART,
OVER_RANGE, REFERENCE_ERR) is returned as ``Invalid``, never as a good value. A command
counts as done only when the outstation answered SUCCESS and, where the template names
one, its effect shows in the read-back within the connection's command timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

from drivers.base import (
    DeviceOffline,
    DriverError,
    IOStats,
    LinkedDeviceIO,
    WriteError,
)
from drivers.dnp3.commands import AnalogOut, Crob, Operation, PointStatus, match_statuses
from drivers.dnp3.link import Dnp3Link, Sample
from drivers.dnp3.template import BINARY_GROUPS, Dnp3Point, Dnp3Template, ReadBack
from gateway.model import NATURES, Invalid, Kind, PointValue

log = logging.getLogger("drivers.dnp3")

# IEEE 1815-2012 flag octets: bit 0 ONLINE, 1 RESTART, 2 COMM_LOST for every kind;
# bits 5/6 are OVER_RANGE/REFERENCE_ERR only for analogs (CHATTER_FILTER for binaries,
# ROLLOVER/DISCONTINUITY for counters, which do not make a value untrue).
BAD_FLAGS = {0x02: "RESTART", 0x04: "COMM_LOST"}
BAD_ANALOG_FLAGS = {**BAD_FLAGS, 0x20: "OVER_RANGE", 0x40: "REFERENCE_ERR"}
ANALOG_GROUPS = frozenset({30, 40})
DOUBLE_BIT_STATES = {0: "INTERMEDIATE", 3: "INDETERMINATE"}
READ_BACK_PAUSE_S = 0.1  # between the read-backs that wait for a command's effect


class CommandRefused(WriteError):
    """The outstation answered a control object with a status other than SUCCESS."""

    def __init__(self, message: str, status: PointStatus) -> None:
        super().__init__(message)
        self.status = status


class Dnp3DeviceIO(LinkedDeviceIO):
    """read(): run the link's due polls, then decode this device's points from the
    latest values the master holds. write(): one control object, its status checked."""

    def __init__(self, device_id: str, template: Dnp3Template, link: Dnp3Link,
                 points: Sequence[str] | None = None,
                 on_close: Callable[[Dnp3DeviceIO], None] | None = None) -> None:
        self.device_id = device_id
        self.template = template
        self.endpoint = link.key
        self.stats = IOStats()
        self.link = link
        self._on_close = on_close
        self._attached = True
        names = self.chosen_points(device_id, template.points, points)
        self.polled = tuple(n for n in names if template.points[n].readable)
        specs = NATURES[template.nature]
        self._decode = [(n, template.points[n], specs[n].kind) for n in self.polled]
        self.last_status: PointStatus | None = None  # of the last command, for callers
        self._flagged: dict[str, str] = {}  # point -> why, while the outstation flags it

    async def read(self) -> dict[str, PointValue | Invalid | None]:
        try:
            if not self._attached:
                raise DeviceOffline(f"{self.device_id}: detached from {self.endpoint}")
            await self.link.refresh(self.stats)
        except DriverError as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            raise
        finally:
            self.stats.extra.update(self.link.extra_counts)
        values = self.link.cache.values
        out: dict[str, PointValue | Invalid | None] = {}
        for name, pt, kind in self._decode:
            assert pt.group is not None and pt.index is not None
            out[name] = decode(values.get((pt.group, pt.index)), pt, kind)
        self._note_flagged(out)
        self.stats.extra["unsolicited"] = self.link.unsolicited_received
        self.stats.extra["malformed"] = self.link.malformed_received
        self.stats.extra.update({f"{k}_polls" if k != "commands" else k: v
                                 for k, v in self.link.counts.items()})
        return out

    def _note_flagged(self, out: dict[str, PointValue | Invalid | None]) -> None:
        """One log line when points start being flagged, one when they are good again."""
        now = {n: v.why for n, v in out.items() if isinstance(v, Invalid)}
        new = {n: why for n, why in now.items() if self._flagged.get(n) != why}
        cleared = [n for n in self._flagged if n not in now]
        if new:
            self.stats.extra["flagged_points"] = int(self.stats.extra.get("flagged_points", 0)) \
                + len(new)
            log.warning("%s: %s flags %s; published as invalid", self.device_id,
                        self.link.peer, ", ".join(f"{n} ({why})" for n, why in new.items()))
        if cleared:
            log.info("%s: %s good again", self.device_id, ", ".join(cleared))
        self._flagged = now

    # ---- write ----------------------------------------------------------------------

    def operation(self, point: str, value: PointValue) -> tuple[Dnp3Point, Operation]:
        """The control object a write of ``value`` to ``point`` sends."""
        pt = self.writable_point(self.template.points, self.template.writable, point)
        cmd = pt.command
        assert cmd is not None  # writable: it has a command
        if cmd.group == 12:
            if not isinstance(value, bool) and value not in (0, 1):
                raise WriteError(f"{self.device_id}: '{point}' is on/off; cannot write "
                                 f"{value!r}")
            code = cmd.crob_for(bool(value))
            if code is None:
                raise WriteError(f"{self.device_id}: '{point}' = {value!r} has no command "
                                 f"(the outstation acts on '{point}' = true only)")
            return pt, Crob(cmd.index, code.wire, 1, cmd.on_time_ms, cmd.off_time_ms)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise WriteError(f"{self.device_id}: '{point}' needs a finite number, "
                             f"found {value!r}")
        return pt, AnalogOut(cmd.index, float(value) / cmd.scale, cmd.ao_variation)

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        pt, op = self.operation(point, value)
        assert pt.command is not None
        try:
            step, statuses = await self.link.operate([op], pt.command.mode, self.stats)
        except ValueError as exc:  # the value does not fit the object's variation
            raise WriteError(f"{self.device_id}: cannot write {value!r} to '{point}': "
                             f"{exc}") from None
        status = match_statuses([op], statuses)[0]
        self.last_status = status
        if not status.ok:
            raise CommandRefused(
                f"{self.device_id}: outstation refused '{point}' = {value!r} "
                f"(g{status.group} index {status.index}, {step}): {status.name}", status)
        if pt.command.read_back is not None:
            await self._await_effect(point, value, pt.command.read_back)
            return None
        if not pt.readable:
            self.link.after_command()
            return None
        got = await self._read_back(point, value, point)
        if not _close_enough(value, got, pt.scale):
            raise WriteError(f"{self.device_id}: '{point}' = {value!r} was accepted but reads "
                             f"back {_shown(got)}")
        return got if not isinstance(got, Invalid) else None

    async def _read_back(self, point: str, value: PointValue, target: str
                         ) -> PointValue | Invalid | None:
        """Point ``target`` after an integrity poll; a failed poll is a WriteError that says the
        command was accepted, so nobody takes the failure for a refusal or a success."""
        try:
            await self.link.refresh(self.stats, force_integrity=True)
        except DriverError as exc:
            raise WriteError(f"{self.device_id}: '{point}' = {value!r} was accepted, but "
                             f"its effect could not be read back: {exc}") from None
        pt = self.template.points[target]
        assert pt.group is not None and pt.index is not None
        kind = NATURES[self.template.nature][target].kind
        return decode(self.link.cache.values.get((pt.group, pt.index)), pt, kind)

    async def _await_effect(self, point: str, value: PointValue, rb: ReadBack) -> None:
        """Poll until ``rb.point`` reads ``rb.value``, for at most the connection's
        command timeout (a breaker takes its operating time, the report its poll)."""
        timeout = self.link.conn.command_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            got = await self._read_back(point, value, rb.point)
            if not isinstance(got, Invalid) and got == rb.value:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriteError(
                    f"{self.device_id}: '{point}' = {value!r} was accepted (SUCCESS) but "
                    f"'{rb.point}' still reads {_shown(got)}, not {rb.value!r}, after "
                    f"{timeout:g} s")
            await asyncio.sleep(min(READ_BACK_PAUSE_S, left))

    async def close(self) -> None:
        """Detach from the link (its connection closes with the last device)."""
        self._attached = False
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


def flag_problem(flags: int, group: int | None) -> str | None:
    """Why the outstation's flags make a value untrue ("OFFLINE, COMM_LOST"), or None."""
    bad = BAD_ANALOG_FLAGS if group in ANALOG_GROUPS else BAD_FLAGS
    names = [] if flags & 0x01 else ["OFFLINE"]
    names += [name for bit, name in bad.items() if flags & bit]
    return ", ".join(names) or None


def decode(sample: Sample | None, pt: Dnp3Point, kind: Kind) -> PointValue | Invalid | None:
    """A point's engineering value; None when never reported; ``Invalid`` (with the
    decoded value kept as raw) when the outstation's flags say it is not true."""
    if sample is None:
        return None
    raw = sample.value
    why = flag_problem(sample.flags, pt.group)
    if pt.group == 3:  # double-bit: 1 DETERMINED_OFF, 2 DETERMINED_ON
        state = int(raw)
        if state in DOUBLE_BIT_STATES:
            why = ", ".join(filter(None, (why, f"state {DOUBLE_BIT_STATES[state]}")))
        raw = state == 2
    value = _value(raw, pt, kind)
    return Invalid(value, f"outstation flags {why}") if why else value


def _value(raw: float | int | bool, pt: Dnp3Point, kind: Kind) -> PointValue:
    if pt.group in BINARY_GROUPS:
        return bool(raw) if kind is not Kind.STR else _enum(pt, int(bool(raw)))
    if pt.enum is not None:
        return _enum(pt, int(raw))
    value = float(raw) * pt.scale
    if kind is Kind.BOOL:
        return value != 0
    if kind is Kind.INT:
        return round(value)
    return value


def _shown(got: PointValue | Invalid | None) -> str:
    if isinstance(got, Invalid):
        return f"{got.raw!r} flagged invalid ({got.why})"
    return repr(got)


def _enum(pt: Dnp3Point, raw: int) -> str:
    assert pt.enum is not None
    return pt.enum.get(raw, f"unknown({raw})")


def _close_enough(wrote: PointValue, got: PointValue | Invalid | None, scale: float) -> bool:
    if isinstance(got, Invalid):
        return False
    if isinstance(wrote, bool) or isinstance(got, bool) or got is None:
        return bool(wrote) == got if isinstance(got, bool) else False
    if isinstance(wrote, int | float) and isinstance(got, int | float):
        return math.isclose(float(wrote), float(got), rel_tol=1e-6, abs_tol=abs(scale))
    return wrote == got
