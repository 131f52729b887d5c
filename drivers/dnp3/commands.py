"""Control objects built and checked here, not by dnp3py.

dnp3py's command builders always send analog outputs as g41v1 (int32), so 12.5 kW would
arrive as 12; and it does not hand the echoed status of each object back to the caller.
We build g12v1 (CROB) and g41v1..v4 blocks ourselves (qualifier 0x28: 2-byte count and
index) and read each object's status octet from the echo (IEEE 1815-2012 4.4.4.3 Rule 7).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dnp3.application.fragment import ObjectBlock
from dnp3.application.qualifiers import ObjectHeader

QUALIFIER_16 = 0x28  # 2-byte count, 2-byte index prefix
CROB_BYTES = 11
AO_VALUE = {1: ("<i", 4), 2: ("<h", 2), 3: ("<f", 4), 4: ("<d", 8)}
INT_LIMITS = {1: (-(2**31), 2**31 - 1), 2: (-(2**15), 2**15 - 1)}

# IEEE 1815-2012 Table 11-7, command status codes.
STATUS_NAMES = {
    0: "SUCCESS", 1: "TIMEOUT", 2: "NO_SELECT", 3: "FORMAT_ERROR", 4: "NOT_SUPPORTED",
    5: "ALREADY_ACTIVE", 6: "HARDWARE_ERROR", 7: "LOCAL", 8: "TOO_MANY_OPS",
    9: "NOT_AUTHORIZED", 10: "AUTOMATION_INHIBIT", 11: "PROCESSING_LIMITED",
    12: "OUT_OF_RANGE", 13: "DOWNSTREAM_LOCAL", 14: "ALREADY_COMPLETE", 15: "BLOCKED",
    16: "CANCELLED", 17: "BLOCKED_OTHER_MASTER", 18: "DOWNSTREAM_FAIL",
    126: "NON_PARTICIPATING", 127: "UNDEFINED",
}


@dataclass(frozen=True, slots=True)
class Crob:
    index: int
    code: int  # the whole control-code octet
    count: int = 1
    on_time_ms: int = 0
    off_time_ms: int = 0


@dataclass(frozen=True, slots=True)
class AnalogOut:
    index: int
    value: float
    variation: int = 3  # 1 int32, 2 int16, 3 float32, 4 float64


Operation = Crob | AnalogOut


@dataclass(frozen=True, slots=True)
class PointStatus:
    """The outstation's answer for one control object."""

    group: int
    index: int
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.status, f"status {self.status}")


def encode_analog(value: float, variation: int) -> bytes:
    """The value field of g41v``variation``; ValueError when it does not fit."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    fmt, _ = AO_VALUE[variation]
    if variation in INT_LIMITS:
        lo, hi = INT_LIMITS[variation]
        raw = round(value)
        if not lo <= raw <= hi:
            raise ValueError(f"{value!r} does not fit g41v{variation} ({lo}..{hi})")
        return struct.pack(fmt, raw)
    if variation == 3 and abs(value) > 3.4028234663852886e38:
        raise ValueError(f"{value!r} does not fit a float32")
    return struct.pack(fmt, value)


def build_blocks(ops: Sequence[Operation]) -> tuple[ObjectBlock, ...]:
    """One block per object kind (CROBs, then analog outputs by variation), in op order."""
    blocks: list[ObjectBlock] = []
    crobs = [op for op in ops if isinstance(op, Crob)]
    if crobs:
        data = bytearray(len(crobs).to_bytes(2, "little"))
        for c in crobs:
            data += c.index.to_bytes(2, "little")
            data += bytes([c.code & 0xFF, c.count & 0xFF])
            data += c.on_time_ms.to_bytes(4, "little") + c.off_time_ms.to_bytes(4, "little")
            data.append(0)
        blocks.append(ObjectBlock(ObjectHeader(group=12, variation=1, qualifier=QUALIFIER_16),
                                  bytes(data)))
    aos = [op for op in ops if isinstance(op, AnalogOut)]
    for variation in sorted({a.variation for a in aos}):
        group = [a for a in aos if a.variation == variation]
        data = bytearray(len(group).to_bytes(2, "little"))
        for a in group:
            data += a.index.to_bytes(2, "little") + encode_analog(a.value, variation)
            data.append(0)
        blocks.append(ObjectBlock(ObjectHeader(group=41, variation=variation,
                                               qualifier=QUALIFIER_16), bytes(data)))
    return tuple(blocks)


def object_width(group: int, variation: int) -> int | None:
    if group == 12 and variation == 1:
        return CROB_BYTES
    if group == 41 and variation in AO_VALUE:
        return AO_VALUE[variation][1] + 1
    return None


def echoed_statuses(blocks: Sequence[ObjectBlock]) -> list[PointStatus]:
    """Every control object's status in a SELECT/OPERATE/DIRECT OPERATE response echo.

    An echo that is cut short or has a qualifier we do not read yields what it holds so
    far; the caller compares against what it sent, so a missing object is an error.
    """
    out: list[PointStatus] = []
    for block in blocks:
        h = block.header
        width = object_width(h.group, h.variation)
        if width is None:
            continue
        sizes = {0x17: (1, 1), 0x28: (2, 2), 0x39: (4, 4)}.get(h.qualifier)
        if sizes is None:
            continue
        count_bytes, index_bytes = sizes
        data = block.data
        if len(data) < count_bytes:
            continue
        count = int.from_bytes(data[:count_bytes], "little")
        pos = count_bytes
        for _ in range(count):
            end = pos + index_bytes + width
            if end > len(data):
                break
            index = int.from_bytes(data[pos:pos + index_bytes], "little")
            out.append(PointStatus(h.group, index, data[end - 1] & 0x7F))
            pos = end
    return out


def match_statuses(ops: Sequence[Operation], echoed: Sequence[PointStatus]
                   ) -> list[PointStatus]:
    """The echoed status of each operation, in the order sent (UNDEFINED when missing)."""
    pool: dict[tuple[int, int], list[PointStatus]] = {}
    for st in echoed:
        pool.setdefault((st.group, st.index), []).append(st)
    out = []
    for op in ops:
        group = 12 if isinstance(op, Crob) else 41
        found = pool.get((group, op.index))
        out.append(found.pop(0) if found else PointStatus(group, op.index, 127))
    return out
