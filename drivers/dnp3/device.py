"""One device behind a DNP3 link: its points from the link's latest data, and commands."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from drivers.base import DeviceIO, DeviceOffline, DriverError, IOStats, UnknownPoint, WriteError
from drivers.dnp3.commands import AnalogOut, Crob, Operation, PointStatus, match_statuses
from drivers.dnp3.link import Dnp3Link, Sample
from drivers.dnp3.template import BINARY_GROUPS, Dnp3Point, Dnp3Template
from gateway.model import NATURES, Kind, PointValue


class CommandRefused(WriteError):
    """The outstation answered a control object with a status other than SUCCESS."""

    def __init__(self, message: str, status: PointStatus) -> None:
        super().__init__(message)
        self.status = status


class Dnp3DeviceIO(DeviceIO):
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
        names = list(template.points) if points is None else list(points)
        unknown = [n for n in names if n not in template.points]
        if unknown:
            raise UnknownPoint(f"{device_id}: points {unknown} are not in the template "
                               f"(known: {', '.join(template.points)})")
        self.polled = tuple(n for n in names if template.points[n].readable)
        specs = NATURES[template.nature]
        self._decode = [(n, template.points[n], specs[n].kind) for n in self.polled]
        self.last_status: PointStatus | None = None  # of the last command, for callers

    async def read(self) -> dict[str, PointValue | None]:
        try:
            if not self._attached:
                raise DeviceOffline(f"{self.device_id}: detached from {self.endpoint}")
            await self.link.refresh(self.stats)
        except DriverError as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            raise
        values = self.link.cache.values
        out: dict[str, PointValue | None] = {}
        for name, pt, kind in self._decode:
            assert pt.group is not None and pt.index is not None
            out[name] = decode(values.get((pt.group, pt.index)), pt, kind)
        self.stats.extra["unsolicited"] = self.link.unsolicited_received
        self.stats.extra["malformed"] = self.link.malformed_received
        self.stats.extra.update({f"{k}_polls" if k != "commands" else k: v
                                 for k, v in self.link.counts.items()})
        return out

    # ---- write ----------------------------------------------------------------------

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        self.stats.writes += 1
        try:
            if not self._attached:
                raise DeviceOffline(f"{self.device_id}: detached from {self.endpoint}")
            return await self._write(point, value)
        except DriverError as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            raise

    def operation(self, point: str, value: PointValue) -> tuple[Dnp3Point, Operation]:
        """The control object a write of ``value`` to ``point`` sends."""
        pt = self.template.points.get(point)
        writable = ", ".join(self.template.writable) or "none"
        if pt is None or pt.command is None:
            why = "is not in the template" if pt is None else "has no command (read-only)"
            raise UnknownPoint(f"{self.device_id}: '{point}' {why} (writable: {writable})")
        cmd = pt.command
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
            statuses = await self.link.operate([op], pt.command.mode, self.stats)
        except ValueError as exc:  # the value does not fit the object's variation
            raise WriteError(f"{self.device_id}: cannot write {value!r} to '{point}': "
                             f"{exc}") from None
        status = match_statuses([op], statuses)[0]
        self.last_status = status
        if not status.ok:
            step = "SELECT" if pt.command.mode == "sbo" else "DIRECT OPERATE"
            raise CommandRefused(
                f"{self.device_id}: outstation refused '{point}' = {value!r} "
                f"(g{status.group} index {status.index}, {step}): {status.name}", status)
        if not pt.readable:
            self.link.after_command()
            return None
        await self.link.refresh(self.stats, force_integrity=True)
        assert pt.group is not None and pt.index is not None
        kind = NATURES[self.template.nature][point].kind
        got = decode(self.link.cache.values.get((pt.group, pt.index)), pt, kind)
        if not _close_enough(value, got, pt.scale):
            raise WriteError(f"{self.device_id}: '{point}' = {value!r} was accepted but reads "
                             f"back {got!r}")
        return got

    async def close(self) -> None:
        """Detach from the link (its connection closes with the last device)."""
        self._attached = False
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


def decode(sample: Sample | None, pt: Dnp3Point, kind: Kind) -> PointValue | None:
    """A point's engineering value; None when never reported or reported offline."""
    if sample is None or not sample.online:
        return None
    raw = sample.value
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


def _enum(pt: Dnp3Point, raw: int) -> str:
    assert pt.enum is not None
    return pt.enum.get(raw, f"unknown({raw})")


def _close_enough(wrote: PointValue, got: PointValue | None, scale: float) -> bool:
    if isinstance(wrote, bool) or isinstance(got, bool) or got is None:
        return bool(wrote) == got if isinstance(got, bool) else False
    if isinstance(wrote, int | float) and isinstance(got, int | float):
        return math.isclose(float(wrote), float(got), rel_tol=1e-6, abs_tol=abs(scale))
    return wrote == got
