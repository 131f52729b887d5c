"""Register <-> value conversion for Modbus points, shared by driver and simulator.

The gateway decodes with these functions and the simulators encode with them, so a
template means the same thing on both sides of the wire.
"""

from __future__ import annotations

import math
import struct

from drivers.template import ModbusPoint, RegType
from gateway.model import PointValue

_FMT = {
    RegType.INT16: ">h", RegType.UINT16: ">H",
    RegType.INT32: ">i", RegType.UINT32: ">I", RegType.FLOAT32: ">f",
}

SUNSPEC_NOT_IMPLEMENTED = {
    RegType.INT16: 0x8000, RegType.UINT16: 0xFFFF,
    RegType.INT32: 0x80000000, RegType.UINT32: 0xFFFFFFFF,
}


class CodecError(ValueError):
    """A value cannot be put into, or taken out of, the registers of a point."""


def _words_to_bytes(words: list[int], word_order: str) -> bytes:
    ordered = words if word_order == "big" else list(reversed(words))
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def _bytes_to_words(data: bytes, word_order: str) -> list[int]:
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order == "big" else list(reversed(words))


def raw_from_registers(point: ModbusPoint, regs: list[int]) -> int | float | str:
    """The raw (unscaled) number or string held by ``regs`` (len == point.width)."""
    if len(regs) != point.width:
        raise CodecError(f"expected {point.width} registers, got {len(regs)}")
    t = point.type
    if t is RegType.STRING:
        return _words_to_bytes(regs, "big").rstrip(b"\x00 ").decode("ascii", "replace")
    if t is RegType.BOOL:
        return 1 if regs[0] else 0
    data = _words_to_bytes(regs, point.word_order)
    return struct.unpack(_FMT[t], data)[0]


def raw_to_raw_bits(raw: int | float | str, point: ModbusPoint) -> int:
    """Raw value as the unsigned integer that sits on the wire (for not_implemented checks)."""
    if isinstance(raw, str) or point.type is RegType.FLOAT32:
        return -1
    if point.type is RegType.INT16:
        return int(raw) & 0xFFFF
    if point.type is RegType.INT32:
        return int(raw) & 0xFFFFFFFF
    return int(raw)


def decode(point: ModbusPoint, regs: list[int], sf: int | None = None) -> PointValue | None:
    """Engineering value of a point from its registers; None if "not implemented".

    ``sf`` is the SunSpec scale-factor exponent (already read) when the point has one.
    """
    raw = raw_from_registers(point, regs)
    if point.not_implemented is not None and raw_to_raw_bits(raw, point) == point.not_implemented:
        return None
    if isinstance(raw, str):
        return raw
    if point.type is RegType.BOOL:
        return bool(raw)
    if point.enum is not None:
        return point.enum.get(int(raw), f"unknown({int(raw)})")
    value = float(raw) * point.scale
    if sf is not None:
        value *= 10.0 ** sf
    if point.type is RegType.FLOAT32 and not math.isfinite(value):
        return None
    return value


def decode_bits(point: ModbusPoint, bits: list[bool]) -> bool:
    if len(bits) < 1:
        raise CodecError("expected 1 bit, got none")
    return bool(bits[0])


def _to_raw_number(point: ModbusPoint, value: PointValue, sf: int | None) -> int | float:
    if point.enum is not None and isinstance(value, str):
        for raw, label in point.enum.items():
            if label == value:
                return raw
        raise CodecError(f"'{value}' is not one of {sorted(point.enum.values())}")
    if isinstance(value, str):
        raise CodecError(f"expected a number, got '{value}'")
    number = float(value) / point.scale
    if sf is not None:
        number /= 10.0 ** sf
    if point.type is RegType.FLOAT32:
        return number
    return round(number)


def encode(point: ModbusPoint, value: PointValue, sf: int | None = None) -> list[int]:
    """Registers that carry ``value`` for ``point`` (inverse of decode)."""
    t = point.type
    if t is RegType.STRING:
        data = str(value).encode("ascii", "replace")[: 2 * point.width]
        return _bytes_to_words(data.ljust(2 * point.width, b"\x00"), "big")
    if t is RegType.BOOL:
        return [1 if value else 0]
    raw = _to_raw_number(point, value, sf)
    fmt = _FMT[t]
    if t is not RegType.FLOAT32:
        raw = int(raw)
        lo, hi = _limits(t)
        if not lo <= raw <= hi:
            raise CodecError(f"{value} does not fit in {t} (raw {raw}, range {lo}..{hi})")
    return _bytes_to_words(struct.pack(fmt, raw), point.word_order)


def _limits(t: RegType) -> tuple[int, int]:
    return {
        RegType.INT16: (-0x8000, 0x7FFF), RegType.UINT16: (0, 0xFFFF),
        RegType.INT32: (-0x80000000, 0x7FFFFFFF), RegType.UINT32: (0, 0xFFFFFFFF),
    }[t]


def encode_clamped(point: ModbusPoint, value: PointValue, sf: int | None = None) -> list[int]:
    """Like encode, but saturates numbers that overflow the register (simulators use this)."""
    try:
        return encode(point, value, sf)
    except CodecError:
        if point.type in (RegType.STRING, RegType.BOOL, RegType.FLOAT32) or isinstance(value, str):
            raise
        lo, hi = _limits(point.type)
        raw = _to_raw_number(point, value, sf)
        clamped = max(lo, min(hi, int(raw)))
        return _bytes_to_words(struct.pack(_FMT[point.type], clamped), point.word_order)
