"""One Modbus device (a unit id behind an endpoint): planned reads, verified writes."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from drivers import codec
from drivers.base import (
    DeviceOffline,
    DriverError,
    IOStats,
    LinkedDeviceIO,
    WriteError,
)
from drivers.modbus.decoders import Decoder, compile_decoder, sf_exponent
from drivers.modbus.endpoint import ILLEGAL_DATA_ADDRESS, Endpoint, ModbusExceptionResponse
from drivers.modbus.planner import Block, Item, plan_reads, sf_key, split_block
from drivers.modbus.validity import Validity
from drivers.template import Access, Function, ModbusPoint, ModbusTemplate, RegType
from gateway.model import Invalid, PointValue

log = logging.getLogger("drivers.modbus")

# (block index, offset in block, point name, decoder, scale-factor address or None, and
# the template's range (lowest, highest) when it has one, else None, None)
_Slot = tuple[int, int, str, Decoder, "int | None", "float | None", "float | None"]


def poll_items(template: ModbusTemplate, names: Sequence[str]) -> list[Item]:
    """Items to read for the named points, plus the scale-factor registers they need."""
    items: list[Item] = []
    sfs: set[int] = set()
    for name in names:
        pt = template.points[name]
        items.append(Item(name, pt.function, pt.address, pt.width))
        if pt.scale_factor is not None:
            sfs.add(pt.scale_factor)
    items.extend(Item(sf_key(a), Function.HOLDING, a, 1) for a in sorted(sfs))
    return items


def readable_fillers(template: ModbusTemplate, items: Sequence[Item]) -> frozenset[int]:
    """Undeclared holding registers known to exist, which reads may bridge freely.

    The template's constants, and on a SunSpec device every register from the base to
    the last one polled: SunSpec models are contiguous and every register of a model is
    readable (points a device lacks read as their not-implemented value).
    """
    out = set(template.constants)
    if template.sunspec:
        ends = [i.end for i in items if i.function is Function.HOLDING
                and i.address >= template.sunspec_base]
        if ends:
            out.update(range(template.sunspec_base, max(ends)))
    return frozenset(out)


class ModbusDeviceIO(LinkedDeviceIO):
    """Reads every polled point of one device with a precomputed plan; writes with read-back.

    When a coalesced read is answered ILLEGAL DATA ADDRESS the block is split into reads
    of declared registers only, and the device keeps the split plan from then on.
    """

    def __init__(self, device_id: str, unit: int, template: ModbusTemplate,
                 endpoint: Endpoint, points: Sequence[str] | None = None, max_gap: int = 0,
                 on_close: Callable[[ModbusDeviceIO], None] | None = None) -> None:
        self.device_id = device_id
        self.unit = unit
        self.template = template
        self.endpoint = endpoint.key
        self.stats = IOStats()
        self._ep = endpoint
        self._on_close = on_close
        self._attached = True
        names = self.chosen_points(device_id, template.points, points)
        # write-only registers are often unreadable: they are written, never polled
        self.polled = tuple(n for n in names if template.points[n].access is not Access.W)
        items = poll_items(template, self.polled)
        self._blocks = plan_reads(items,
                                  max_registers=template.max_registers_per_read,
                                  max_gap=max_gap, fillers=readable_fillers(template, items))
        self._decoders = {n: compile_decoder(template.points[n]) for n in self.polled}
        self.validity = Validity(device_id, template, self.polled)
        self._compile()

    @property
    def pipeline_window(self) -> int:
        """How many device reads the poller may keep in flight on this device's endpoint."""
        return self._ep.pipeline_window

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The current read plan (one Modbus request per block)."""
        return tuple(self._blocks)

    def _compile(self) -> None:
        where: dict[str, tuple[int, int]] = {}
        for bi, blk in enumerate(self._blocks):
            for it in blk.items:
                where[it.key] = (bi, it.address - blk.address)
        self._sf_slots = []
        for key, (bi, off) in where.items():
            if key.startswith("sf@"):
                self._sf_slots.append((bi, off, int(key[3:])))
        self._slots: list[_Slot] = []
        for name in self.polled:
            bi, off = where[name]
            pt = self.template.points[name]
            lo = hi = None
            if name in self.validity.ranged:  # the range check inlined for good floats
                lo = -math.inf if pt.min is None else pt.min
                hi = math.inf if pt.max is None else pt.max
            self._slots.append((bi, off, name, self._decoders[name], pt.scale_factor, lo, hi))
        self._requests = [(b.function, b.address, b.count) for b in self._blocks]
        self.stats.extra["requests_per_read"] = len(self._blocks)

    def _split(self, index: int) -> bool:
        parts = split_block(self._blocks[index])
        if len(parts) == 1:
            return False
        blk = self._blocks[index]
        log.warning("%s: %s answered ILLEGAL DATA ADDRESS; reading it as %d requests from now "
                    "on", self.device_id, blk.describe(), len(parts))
        self._blocks[index:index + 1] = parts
        self.stats.extra["plan_splits"] = self.stats.extra.get("plan_splits", 0) + 1
        self._compile()
        return True

    # ---- read -----------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def plan(self) -> Sequence[tuple[Function, int, int]]:
        """The requests of one read: (function, address, count) of each block."""
        return self._requests

    async def read(self) -> dict[str, PointValue | Invalid | None]:
        while True:
            try:
                if not self._attached:
                    raise DeviceOffline(f"{self.device_id}: detached from {self.endpoint}")
                results = await self._ep.read_many(self._requests, self.unit, self.stats,
                                                   self.device_id)
            except DriverError as exc:
                if self.read_failed(exc):
                    continue  # read again with the finer plan
                raise
            return self.values_of(results)

    def read_failed(self, exc: DriverError) -> bool:
        """Note a failed read; True when it is to be read again at once (a coalesced read
        was answered ILLEGAL DATA ADDRESS and the plan is now split)."""
        if (isinstance(exc, ModbusExceptionResponse) and exc.code == ILLEGAL_DATA_ADDRESS
                and self._split(exc.block)):
            return True
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        return False

    def values_of(self, results: Sequence[Sequence[int]]
                  ) -> dict[str, PointValue | Invalid | None]:
        """The points' values from the registers (or bits) of every block of the plan."""
        self.stats.last_error = None  # recovered: an old error must not look current
        sfs: dict[int, int | None] = {}
        for bi, off, addr in self._sf_slots:
            sfs[addr] = sf_exponent(results[bi][off])
        out: dict[str, PointValue | Invalid | None] = {}
        check = self.validity.check
        for bi, off, name, decode, sf_addr, lo, hi in self._slots:
            missing_sf = None
            if sf_addr is None:
                value = decode(results[bi], off, None)
            else:
                sf = sfs[sf_addr]
                if sf is None:
                    value, missing_sf = None, sf_addr
                else:
                    value = decode(results[bi], off, sf)
            if value is None or (lo is not None and not (
                    value.__class__ is float and lo <= value <= hi)):  # type: ignore[operator]
                out[name] = check(name, value, results[bi], off, missing_sf)
            else:
                out[name] = value
        if self.validity.invalid:
            self.validity.settle(out)
        return out

    # ---- write ----------------------------------------------------------------------

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        pt = self.writable_point(self.template.points, self.template.writable, point)
        ep, unit, stats = self._ep, self.unit, self.stats
        sf: int | None = None
        if pt.scale_factor is not None:
            raw_sf = await ep.read(Function.HOLDING, pt.scale_factor, 1, unit, stats,
                                   self.device_id)
            sf = sf_exponent(int(raw_sf[0]))
            if sf is None:
                raise WriteError(f"{self.device_id}: scale factor of '{point}' (register "
                                 f"{pt.scale_factor}) is not implemented; not writing")
        try:
            regs = codec.encode(pt, value, sf)
        except codec.CodecError as exc:
            raise WriteError(f"{self.device_id}: cannot write {value!r} to '{point}': "
                             f"{exc}") from None
        try:
            if pt.function is Function.COIL:
                await ep.write_coil(pt.address, bool(regs[0]), unit, stats, self.device_id)
            else:
                await ep.write_registers(pt.address, regs, unit, stats, self.device_id)
        except ModbusExceptionResponse as exc:
            raise WriteError(f"{self.device_id}: device refused '{point}' = {value!r}: "
                             f"{exc}") from None
        if pt.access is Access.W:
            return None
        back = await ep.read(pt.function, pt.address, pt.width, unit, stats, self.device_id)
        expected = codec.decode(pt, regs, sf)
        got = codec.decode(pt, [int(x) for x in back[:pt.width]], sf)
        if not _same(expected, got, _step(pt, sf)):
            raise WriteError(f"{self.device_id}: wrote '{point}' = {value!r} but read back "
                             f"{got!r}")
        return got

    async def close(self) -> None:
        """Detach from the endpoint (its connection closes with the last device)."""
        self._attached = False
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


def _step(point: ModbusPoint, sf: int | None) -> float | None:
    """The resolution of an integer point in its unit (None for floats, enums, bits)."""
    if (point.type not in (RegType.INT16, RegType.UINT16, RegType.INT32, RegType.UINT32)
            or point.enum is not None or point.function.is_bit):
        return None
    return abs(point.scale) * (10.0 ** sf if sf is not None else 1.0)


def _same(a: PointValue | None, b: PointValue | None, step: float | None) -> bool:
    """True when the read-back ``b`` shows the written ``a``: within one step of the
    point's resolution (devices round to their own grid), exactly for anything else."""
    if (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and not isinstance(a, bool) and not isinstance(b, bool)):
        if step:
            return abs(a - b) <= step * (1 + 1e-6)
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b
