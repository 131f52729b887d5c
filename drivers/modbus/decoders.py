"""Per-point decoders compiled once at attach, for the poll hot path.

Each decoder takes the registers (or bits) of a whole read block, the point's offset in
it and the SunSpec scale-factor exponent, and returns exactly what
``drivers.codec.decode`` returns for the same registers (tests check this over every
type, word order and option). Plain numbers and integer enums take a fast path of a few
integer operations; strings and unusual combinations fall back to the codec itself.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from drivers import codec
from drivers.template import ModbusPoint, RegType
from gateway.model import PointValue

Decoder = Callable[[Sequence[int], int, "int | None"], "PointValue | None"]

_F32 = struct.Struct(">f")
_SIGNED = {RegType.INT16: 0x8000, RegType.INT32: 0x80000000}
_SPAN = {RegType.INT16: 0x10000, RegType.INT32: 0x100000000}


def compile_decoder(point: ModbusPoint) -> Decoder:
    """A decoder for ``point`` equivalent to ``codec.decode`` on its registers."""
    if point.function.is_bit:
        return _bit if point.not_implemented is None else _fallback(point)
    t = point.type
    if t is RegType.STRING or (point.enum is not None and t in (RegType.BOOL,
                                                                RegType.FLOAT32)):
        return _fallback(point)
    if t is RegType.BOOL:
        return _reg_bool if point.not_implemented is None else _fallback(point)
    if t is RegType.FLOAT32:
        if point.not_implemented is not None:
            return _fallback(point)
        return _float32(point.scale, point.word_order == "big")
    return _integer(point)


def sf_exponent(raw: int) -> int | None:
    """A SunSpec scale-factor register (int16) as an exponent; None if not implemented."""
    if raw == 0x8000:
        return None
    return raw - 0x10000 if raw >= 0x8000 else raw


def _bit(bits: Sequence[int], offset: int, sf: int | None) -> PointValue | None:
    return bool(bits[offset])


def _reg_bool(regs: Sequence[int], offset: int, sf: int | None) -> PointValue | None:
    return bool(regs[offset])


def _fallback(point: ModbusPoint) -> Decoder:
    width = point.width

    def decode(regs: Sequence[int], offset: int, sf: int | None) -> PointValue | None:
        return codec.decode(point, list(regs[offset:offset + width]), sf)

    return decode


def _float32(scale: float, big: bool) -> Decoder:
    unpack = _F32.unpack
    isfinite = math.isfinite

    def decode(regs: Sequence[int], offset: int, sf: int | None) -> PointValue | None:
        if big:
            bits = (regs[offset] << 16) | regs[offset + 1]
        else:
            bits = (regs[offset + 1] << 16) | regs[offset]
        value = float(unpack(bits.to_bytes(4, "big"))[0]) * scale
        if sf is not None:
            value *= 10.0 ** sf
        return value if isfinite(value) else None

    return decode


def _integer(point: ModbusPoint) -> Decoder:
    scale = point.scale
    ni = point.not_implemented
    sign = _SIGNED.get(point.type, 0)
    span = _SPAN.get(point.type, 0)
    wide = point.type.registers(None) == 2
    big = point.word_order == "big"
    enum = point.enum

    def decode(regs: Sequence[int], offset: int, sf: int | None) -> PointValue | None:
        if not wide:
            u = regs[offset]
        elif big:
            u = (regs[offset] << 16) | regs[offset + 1]
        else:
            u = (regs[offset + 1] << 16) | regs[offset]
        if u == ni:
            return None
        if sign and u >= sign:
            u -= span
        if enum is not None:  # a state: its name, unscaled
            return enum.get(u, f"unknown({u})")
        value = float(u) * scale
        if sf is not None:
            value *= 10.0 ** sf
        return value

    return decode
