"""DBC files (cantools) and compiled signal decoders for the hot path.

cantools gives the meaning of a frame; decoding every periodic frame through it is slow
(bitstruct, dicts of every signal, choices). A device needs only the signals its template
maps, so those are compiled here into shift/mask/scale tuples over one ``int.from_bytes``
of the payload. Float and multiplexed signals fall back to cantools. The decoders are
checked against cantools on random payloads in the tests.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cantools
from cantools.database.can import Database, Message, Signal

Payload = bytes | bytearray  # python-can hands frames over as bytearray
SignalDecoder = Callable[[Payload], float]


class DbcError(ValueError):
    """A DBC file cannot be read, or names something it does not define."""


@cache
def load_dbc(path: Path) -> Database:
    """The DBC at ``path`` (cached per resolved path); DbcError says why it cannot load."""
    try:
        db = cantools.database.load_file(str(path), database_format="dbc", strict=True)
    except FileNotFoundError:
        raise DbcError(f"DBC file '{path}' does not exist") from None
    except Exception as exc:  # cantools raises parser-specific errors
        raise DbcError(f"DBC file '{path}' cannot be read: {exc}") from None
    assert isinstance(db, Database)
    return db


def decimals(*numbers: float) -> int:
    """Decimal places a scale/offset pair produces (0.1 -> 1, -273.15 -> 2)."""
    out = 0
    for x in numbers:
        exp = decimal.Decimal(repr(float(x))).normalize().as_tuple().exponent
        if isinstance(exp, int):
            out = max(out, -exp)
    return min(out, 12)


def resolution(sig: Signal) -> float:
    """The smallest step of a signal's physical value."""
    return abs(float(sig.scale)) if not sig.is_float else 0.0


def lsb_shift(sig: Signal, length_bytes: int) -> int:
    """Right shift of the signal's LSB within the payload read as one integer."""
    if sig.byte_order == "little_endian":
        return int(sig.start)
    # Motorola: the DBC start bit is the MSB in "sawtooth" numbering. Linear position
    # from the first byte's most significant bit, then distance of the LSB from the end.
    msb_lin = (sig.start // 8) * 8 + (7 - sig.start % 8)
    lsb_lin = msb_lin + sig.length - 1
    return 8 * length_bytes - 1 - lsb_lin


IntDecoder = Callable[[int], float]


def fast_scale(scale: float, offset: float) -> tuple[int, int] | None:
    """(divisor, raw offset) when value = (raw + raw_offset) / divisor is exact: scale is
    1/integer and offset a whole number of steps. Division by 10 rounds correctly, so
    2301 / 10 reads 230.1 without a round() per value."""
    if scale <= 0:
        return None
    div = round(1.0 / scale)
    if div < 1 or abs(1.0 / div - scale) > 1e-12 * scale:
        return None
    off = offset * div
    if abs(off - round(off)) > 1e-6:
        return None
    return div, round(off)


def compile_int(msg: Message, sig: Signal) -> tuple[bool, IntDecoder] | None:
    """(big endian?, function payload-as-int -> physical value) for a plain integer
    signal; None for float or multiplexed signals (decode those with cantools). The int
    is ``int.from_bytes(data, "little")``, or of the first ``msg.length`` bytes "big"."""
    if sig.is_float or msg.is_multiplexed():
        return None
    shift = lsb_shift(sig, msg.length)
    mask = (1 << sig.length) - 1
    sign_bit = 1 << (sig.length - 1)
    full = 1 << sig.length
    signed = bool(sig.is_signed)
    scale, offset = float(sig.scale), float(sig.offset)
    big = sig.byte_order == "big_endian"
    fast = fast_scale(scale, offset)
    if fast is not None:
        div, off = fast
        if not signed:
            return big, lambda x: ((x >> shift) & mask) / div if not off \
                else (((x >> shift) & mask) + off) / div

        def signed_div(x: int) -> float:
            raw = (x >> shift) & mask
            if raw & sign_bit:
                raw -= full
            return (raw + off) / div
        return big, signed_div
    places = decimals(scale, offset)

    def general(x: int) -> float:
        raw = (x >> shift) & mask
        if signed and raw & sign_bit:
            raw -= full
        return round(raw * scale + offset, places)
    return big, general


def compile_signal(msg: Message, sig: Signal) -> SignalDecoder:
    """A function payload -> physical value of ``sig`` (raw * scale + offset, rounded to
    the signal's resolution so 0.1 * 2301 reads 230.1, not 230.10000000000002)."""
    compiled = compile_int(msg, sig)
    if compiled is None:
        name = sig.name

        def slow(data: Payload) -> float:
            decoded = msg.decode(bytes(data), decode_choices=False, scaling=True)
            assert isinstance(decoded, dict)
            value = decoded[name]
            return float(value) if isinstance(value, int | float) else float("nan")
        return slow
    big, fn = compiled
    length = msg.length
    if big:
        return lambda data: fn(int.from_bytes(data[:length], "big"))
    return lambda data: fn(int.from_bytes(data, "little"))


def signal_of(msg: Message, name: str) -> Signal | None:
    for s in msg.signals:
        if s.name == name:
            return s
    return None


def clamp_to_signal(sig: Signal, value: float) -> float:
    """``value`` limited to what the signal can carry (its DBC range, else its raw range)."""
    lo, hi = sig.minimum, sig.maximum
    if lo is None or hi is None:
        raw_lo = -(1 << (sig.length - 1)) if sig.is_signed else 0
        raw_hi = (1 << (sig.length - 1)) - 1 if sig.is_signed else (1 << sig.length) - 1
        ends = (raw_lo * sig.scale + sig.offset, raw_hi * sig.scale + sig.offset)
        lo = min(ends) if lo is None else lo
        hi = max(ends) if hi is None else hi
    return min(max(value, float(lo)), float(hi))
