"""Register codec: every type and word order round-trips, and the driver's compiled
decoders give exactly what codec.decode gives."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from drivers import codec
from drivers.modbus.decoders import compile_decoder, sf_exponent
from drivers.template import ModbusPoint

NUMERIC = ["int16", "uint16", "int32", "uint32", "float32"]


def point(**kw: Any) -> ModbusPoint:
    return ModbusPoint(address=100, **kw)


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize(("type_", "value"), [
    ("int16", -1234), ("int16", 32767), ("uint16", 65535), ("int32", -2_000_000_000),
    ("uint32", 4_000_000_000), ("float32", 1234.5),
])
def test_numbers_round_trip(type_: str, value: float, word_order: str) -> None:
    pt = point(type=type_, word_order=word_order)
    regs = codec.encode(pt, value)
    assert len(regs) == pt.width
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert codec.decode(pt, regs) == value


def test_word_order_swaps_the_words() -> None:
    big = codec.encode(point(type="uint32"), 0x12345678)
    little = codec.encode(point(type="uint32", word_order="little"), 0x12345678)
    assert big == [0x1234, 0x5678]
    assert little == [0x5678, 0x1234]


def test_scale_and_sunspec_scale_factor() -> None:
    pt = point(type="int16", scale=0.1)
    assert codec.encode(pt, -12.3) == [(-123) & 0xFFFF]
    assert codec.decode(pt, [(-123) & 0xFFFF]) == pytest.approx(-12.3)
    sf_pt = point(type="uint16", scale_factor=7)
    assert codec.encode(sf_pt, 50.01, sf=-2) == [5001]
    assert codec.decode(sf_pt, [5001], sf=-2) == pytest.approx(50.01)


def test_strings_enums_bools_and_not_implemented() -> None:
    s = point(type="string", count=4)
    assert codec.encode(s, "SMA") == [0x534D, 0x4100, 0, 0]
    assert codec.decode(s, codec.encode(s, "SMA")) == "SMA"
    e = point(type="uint16", enum={0: "off", 4: "mppt"})
    assert codec.encode(e, "mppt") == [4]
    assert codec.decode(e, [4]) == "mppt"
    assert codec.decode(e, [9]) == "unknown(9)"
    b = point(type="bool")
    assert codec.decode(b, [7]) is True
    assert codec.decode(b, codec.encode(b, False)) is False
    ni = point(type="int16", not_implemented=0x8000)
    assert codec.decode(ni, [0x8000]) is None
    assert codec.decode(point(type="float32"), [0x7FC0, 0]) is None  # NaN is no value


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(codec.CodecError, match="does not fit in uint16"):
        codec.encode(point(type="uint16"), -1)
    with pytest.raises(codec.CodecError, match="not one of"):
        codec.encode(point(type="uint16", enum={1: "on"}), "off")
    assert codec.encode_clamped(point(type="int16"), 1e9) == [0x7FFF]


def test_sf_exponent_reads_int16_and_not_implemented() -> None:
    assert sf_exponent(0xFFFE) == -2
    assert sf_exponent(3) == 3
    assert sf_exponent(0x8000) is None


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("type_", NUMERIC)
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("scale", [1.0, 0.1, 0.001, 100.0])
@pytest.mark.parametrize("ni", [None, 0x8000, 0xFFFF, 0x80000000])
def test_compiled_decoder_equals_codec(type_: str, word_order: str, scale: float,
                                       ni: int | None) -> None:
    rng = random.Random(f"{type_}{word_order}{scale}{ni}")
    pt = point(type=type_, word_order=word_order, scale=scale, not_implemented=ni)
    dec = compile_decoder(pt)
    specials = [[0x8000, 0], [0, 0x8000], [0xFFFF, 0xFFFF], [0x7FC0, 0], [0x7F80, 0], [0, 0]]
    samples = specials + [[rng.randrange(0x10000), rng.randrange(0x10000)] for _ in range(300)]
    for regs in samples:
        regs = regs[:pt.width]
        block = [0x1111, *regs, 0x2222]  # the point sits at offset 1 in a larger block
        for sf in (None, -2, 0, 3):
            want = codec.decode(pt, regs, sf)
            got = dec(block, 1, sf)
            assert _same(want, got), (regs, sf, want, got)


@pytest.mark.parametrize("kw", [
    {"type": "bool"}, {"type": "bool", "not_implemented": 1},
    {"type": "uint16", "enum": {0: "off", 1: "on"}}, {"type": "string", "count": 3},
    {"type": "uint16", "enum": {0: "off", 0x4142: "ab"}, "not_implemented": 0xFFFF},
    {"type": "int16", "enum": {-1: "fault", 1: "on"}, "scale": 0.1},
    {"type": "int16", "enum": {-1: "fault"}, "not_implemented": 0x8000},
    {"type": "uint32", "enum": {0x41424142: "x"}, "word_order": "little"},
    {"type": "int32", "enum": {-1: "fault"}, "scale_factor": 7},
    {"type": "float32", "not_implemented": 0x7FC00000},
    {"function": "coil", "type": "bool"}, {"function": "discrete", "type": "bool"},
])
def test_compiled_decoder_equals_codec_for_other_kinds(kw: dict[str, Any]) -> None:
    pt = point(**kw)
    dec = compile_decoder(pt)
    for regs in ([0] * pt.width, [1] * pt.width, [0x4142] * pt.width,
                 ([0x7FC0] + [0] * pt.width)[:pt.width], [0xFFFF] * pt.width,
                 ([0x8000] + [0] * pt.width)[:pt.width]):
        for sf in (None, -1):
            assert _same(codec.decode(pt, regs, sf), dec([9, *regs], 1, sf))
