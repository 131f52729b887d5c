"""The register image of one simulated Modbus device, driven by its physics model.

Built from the same template the gateway polls with, encoded with drivers.codec, so both
sides of the wire mean the same thing. Registers are refreshed lazily: the runner bumps a
shared generation after each physics step, and a block is re-encoded on the first request
that touches it afterwards, so a request on a fresh block costs one integer comparison.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.codec import decode, encode_clamped
from drivers.template import Access, Function, ModbusPoint, ModbusTemplate, RegType
from gateway.model import PointValue
from sim_devices import sunspec

log = logging.getLogger(__name__)

# Function code -> block of the non-shared pymodbus device layout.
COILS, DISCRETE, HOLDING, INPUT = "c", "d", "h", "i"
FC_BLOCK = {1: COILS, 5: COILS, 15: COILS, 2: DISCRETE, 4: INPUT,
            3: HOLDING, 6: HOLDING, 16: HOLDING, 22: HOLDING, 23: HOLDING}
_FUNCTION_BLOCK = {Function.COIL: COILS, Function.DISCRETE: DISCRETE,
                   Function.HOLDING: HOLDING, Function.INPUT: INPUT}
_SPARE_BITS = 65520  # a bit block needs one entry; unused devices get 16 bits up here


class ModelLike(Protocol):
    """What the serving layer needs of a physics model (sim_devices.physics.base.SimModel)."""

    device_id: str

    def read_points(self) -> dict[str, PointValue]: ...
    def write_point(self, point: str, value: PointValue) -> PointValue: ...
    def note_comm_write(self, wall_s: float) -> None: ...


class Generation:
    """A counter bumped after every physics step; images compare against it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


@dataclass(frozen=True, slots=True)
class _Reg:
    name: str
    point: ModbusPoint
    sf: int | None  # SunSpec scale factor exponent (served constant)
    idle: list[int] | None  # registers for "no value" (not_implemented), if defined


def _int16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def _runs(regs: dict[int, int]) -> list[SimData]:
    """Contiguous address runs as REGISTERS SimData (gaps stay invalid addresses)."""
    out: list[SimData] = []
    addrs = sorted(regs)
    i = 0
    while i < len(addrs):
        j = i
        while j + 1 < len(addrs) and addrs[j + 1] == addrs[j] + 1:
            j += 1
        out.append(SimData(address=addrs[i], values=[regs[a] for a in addrs[i:j + 1]],
                           datatype=DataType.REGISTERS))
        i = j + 1
    return out or [SimData(address=0, datatype=DataType.INVALID)]


def _bit_runs(bits: set[int]) -> list[SimData]:
    out: list[SimData] = []
    addrs = sorted(bits)
    i = 0
    while i < len(addrs):
        j = i
        while j + 1 < len(addrs) and addrs[j + 1] == addrs[j] + 1:
            j += 1
        out.append(SimData(address=addrs[i], values=[False] * (j - i + 1),
                           datatype=DataType.BITS))
        i = j + 1
    return out or [SimData(address=_SPARE_BITS, values=[False] * 16, datatype=DataType.BITS)]


class DeviceImage:
    """Registers of one device behind a unit id, kept in step with its model."""

    def __init__(self, device_id: str, unit_id: int, template: ModbusTemplate, model: ModelLike,
                 generation: Generation) -> None:
        self.device_id = device_id
        self.unit_id = unit_id
        self.template = template
        self.model = model
        self.generation = generation
        self.stuck = False  # fault: registers stop updating
        self._fresh: dict[str, int] = {}  # block -> generation it was encoded at
        self._points_gen = -1
        self._points: dict[str, PointValue] = {}
        self._bad: set[str] = set()  # points whose value could not be encoded (logged once)
        regs: dict[str, dict[int, int]] = {HOLDING: {}, INPUT: {}}
        bits: dict[str, set[int]] = {COILS: set(), DISCRETE: set()}
        if template.sunspec:
            lay = sunspec.layout(sunspec.INVERTER_CHAIN, template.sunspec_base)
            regs[HOLDING].update(sunspec.image(lay, strings={
                (1, "Mn"): template.manufacturer, (1, "Md"): template.model,
                (1, "Vr"): "autogrid-sim", (1, "SN"): device_id}, values={(1, "DA"): unit_id}))
        for addr, value in template.constants.items():
            regs[HOLDING][addr] = value & 0xFFFF
        self._regs: dict[str, list[_Reg]] = {HOLDING: [], INPUT: []}
        self._bits: dict[str, list[tuple[str, ModbusPoint]]] = {COILS: [], DISCRETE: []}
        self._owner: dict[str, dict[int, tuple[str, ModbusPoint]]] = {HOLDING: {}, COILS: {}}
        self._sf: dict[str, int] = {}
        for name, pt in template.points.items():
            block = _FUNCTION_BLOCK[pt.function]
            if pt.function.is_bit:
                bits[block].add(pt.address)
                self._bits[block].append((name, pt))
            else:
                for a in range(pt.address, pt.address + pt.width):
                    regs[block].setdefault(a, 0)
                sf = None
                if pt.scale_factor is not None:
                    sf = _int16(regs[HOLDING].get(pt.scale_factor, 0))
                idle = None
                if pt.not_implemented is not None and pt.type is not RegType.FLOAT32:
                    raw = pt.not_implemented
                    idle = [(raw >> (16 * (pt.width - 1 - i))) & 0xFFFF for i in range(pt.width)]
                    if pt.word_order == "little":
                        idle.reverse()
                self._regs[block].append(_Reg(name, pt, sf, idle))
                if sf is not None:
                    self._sf[name] = sf
            if block in self._owner:
                for a in range(pt.address, pt.address + pt.width):
                    self._owner[block][a] = (name, pt)
        self._simdata = ([*_bit_runs(bits[COILS])], [*_bit_runs(bits[DISCRETE])],
                         _runs(regs[HOLDING]), _runs(regs[INPUT]))

    def sim_device(self, action: object) -> SimDevice:
        """The pymodbus SimDevice serving this image (``action`` is the request hook)."""
        return SimDevice(id=self.unit_id, simdata=self._simdata, action=action)  # type: ignore[arg-type]

    def points(self) -> dict[str, PointValue]:
        """The model's points, read at most once per generation."""
        if self._points_gen != self.generation.value:
            self._points = self.model.read_points()
            self._points_gen = self.generation.value
        return self._points

    def refresh(self, block: str, start: int, registers: list[int]) -> None:
        """Re-encode ``block`` from the model if a physics step happened since last time."""
        gen = self.generation.value
        if self._fresh.get(block) == gen or self.stuck:
            return
        self._fresh[block] = gen
        values = self.points()
        if block in (COILS, DISCRETE):
            for name, pt in self._bits[block]:
                v = values.get(name)
                if v is None:
                    continue
                idx, mask = pt.address // 16 - start, 1 << (pt.address % 16)
                registers[idx] = registers[idx] | mask if v else registers[idx] & ~mask
            return
        for reg in self._regs[block]:
            v = values.get(reg.name)
            words = reg.idle
            if v is not None:
                try:
                    words = encode_clamped(reg.point, v, reg.sf)
                except (ValueError, OverflowError) as exc:
                    self._log_bad(reg.name, v, exc)
            if words is not None:
                off = reg.point.address - start
                registers[off:off + len(words)] = words

    def _log_bad(self, name: str, value: PointValue, exc: Exception) -> None:
        if name not in self._bad:
            self._bad.add(name)
            log.warning("%s: point %s value %r does not fit template %s: %s", self.device_id,
                        name, value, self.template.model or "?", exc)

    def write(self, block: str, start: int, address: int, registers: list[int],
              values: list[int] | list[bool],
              decoded: dict[str, PointValue] | None = None) -> ExcCodes | None:
        """Apply a client write: decode, let the model clamp or refuse, and put the
        accepted value into ``values`` (pymodbus stores them after this returns).
        ``decoded`` (when given) gets each point's value as the client sent it."""
        owners = self._owner.get(block)
        if owners is None:
            return ExcCodes.ILLEGAL_FUNCTION
        end = address + len(values)
        targets: dict[str, ModbusPoint] = {}
        for a in range(address, end):
            owner = owners.get(a)
            if owner is None or owner[1].access is Access.R:
                return ExcCodes.ILLEGAL_ADDRESS
            name, pt = owner
            if pt.address < address or pt.address + pt.width > end:
                return ExcCodes.ILLEGAL_ADDRESS  # a write must cover whole points
            targets[name] = pt
        for name, pt in targets.items():
            off = pt.address - address
            if block == COILS:
                value: PointValue | None = bool(values[off])
            else:
                sf = self._sf.get(name)
                value = decode(pt, [int(w) for w in values[off:off + pt.width]], sf)
            if value is None:
                return ExcCodes.ILLEGAL_VALUE
            if decoded is not None:
                decoded[name] = value
            try:
                accepted = self.model.write_point(name, value)
            except ValueError as exc:
                log.info("%s: write %s=%r refused: %s", self.device_id, name, value, exc)
                return ExcCodes.ILLEGAL_VALUE
            if block == COILS:
                values[off] = bool(accepted)
                continue
            try:
                words = encode_clamped(pt, accepted, sf)
            except (ValueError, OverflowError):
                continue
            values[off:off + pt.width] = words  # type: ignore[assignment]
        self.model.note_comm_write(time.monotonic())
        return None
