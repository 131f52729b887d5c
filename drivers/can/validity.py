"""Which decoded CAN values cannot be true, and why.

BMS and charger vendors follow the J1939/CANopen conventions for a value they do not
have: an unsigned signal with all bits set is "not available", all bits set minus one is
"error" (per signal width: 0xFF, 0xFFFF, ...). Signed (two's complement) signals have no
J1939 pattern (J1939 carries signed quantities with an offset, and raw -1 is a real small
negative reading), so for them only "sign bit alone" (0x8000, SunSpec's int16 "not
implemented") counts. A value in the signal's DBC value table is never a pattern (the DBC
says what it means). A physical value outside the DBC signal's [min|max] cannot be true
either. A frame whose every byte is 0xFF is the node's "nothing available" frame: every
point it carries is invalid. 1-bit signals carry no pattern.

The checks are split in two: one chained comparison on the raw integer the generated
decoder makes for every value (``fast_valid``), and ``why``, which decides and names the
reason only for a value outside that span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cantools.database.can import Message, Signal

from gateway.model import Invalid, PointValue


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True, slots=True)
class SignalCheck:
    """The validity rules of one DBC signal (see the module docstring)."""

    where: str  # "BMS_SOC.SOC"
    unit: str
    width: int
    signed: bool
    choices: frozenset[int]
    lo: float | None
    hi: float | None
    tol: float  # half a resolution step: a value on the bound is inside it

    @classmethod
    def of(cls, msg: Message, sig: Signal) -> SignalCheck:
        lo = None if sig.minimum is None else float(sig.minimum)
        hi = None if sig.maximum is None else float(sig.maximum)
        choices = frozenset(int(k) for k in (sig.choices or {}))
        step = 0.0 if sig.is_float else abs(float(sig.scale))
        return cls(f"{msg.name}.{sig.name}", f" {sig.unit}" if sig.unit else "",
                   int(sig.length), bool(sig.is_signed), choices, lo, hi, step / 2 + 1e-9)

    @property
    def patterns(self) -> bool:
        """Whether raw bit patterns mean something for this signal (width >= 2 bits)."""
        return self.width >= 2

    def fast_valid(self, sig: Signal, raw: str, phys: str) -> str | None:
        """Python source that is true only for a value that is surely fine: ``raw`` (the
        integer raw value, "None" for float/multiplexed signals) within the raw span of
        the DBC range minus the patterns, else ``phys`` within the range (false for NaN).
        Stricter than ``why`` at the edges, never looser: ``why`` decides the rest. None
        when every raw value the signal can carry is fine (a plain 1-bit flag)."""
        if raw == "None":
            lo = repr(self.lo - self.tol) if self.lo is not None else "-INF"
            hi = repr(self.hi + self.tol) if self.hi is not None else "INF"
            return f"{lo} <= {phys} <= {hi}"
        if self.signed:
            rlo, rhi = -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        else:
            rlo, rhi = 0, (1 << self.width) - 1
        span = rlo, rhi
        if self.patterns:
            if self.signed:
                rlo += 1  # the sign bit alone
            else:
                rhi -= 2  # all ones, all ones minus one
        scale, offset = float(sig.scale), float(sig.offset)
        ends = [(x - offset) / scale for x in (self.lo, self.hi) if x is not None]
        if self.lo is not None and self.hi is not None:
            low, high = min(ends), max(ends)
            rlo, rhi = max(rlo, math.ceil(low)), min(rhi, math.floor(high))
        elif ends:  # one bound only: its side depends on the sign of the scale
            bound = ends[0]
            if (self.lo is not None) == (scale > 0):
                rlo = max(rlo, math.ceil(bound))
            else:
                rhi = min(rhi, math.floor(bound))
        if (rlo, rhi) == span:
            return None
        return f"{rlo} <= {raw} <= {rhi}"

    def why(self, bits: int | None, phys: float) -> str | None:
        """Why the value is invalid, or None when it is fine after all."""
        if bits is not None and self.patterns and bits not in self.choices:
            ones = (1 << self.width) - 1
            hexw = (self.width + 3) // 4
            if self.signed and bits == 1 << (self.width - 1):
                return (f"the not-available pattern 0x{bits:0{hexw}X} (sign bit alone) of "
                        f"{self.where}")
            if not self.signed and bits == ones:
                return (f"the not-available pattern 0x{bits:0{hexw}X} (all {self.width} bits "
                        f"set) of {self.where}")
            if not self.signed and bits == ones - 1:
                return (f"the error pattern 0x{bits:0{hexw}X} (all {self.width} bits set "
                        f"minus one) of {self.where}")
        if math.isnan(phys):
            return f"not a number in {self.where}"
        if self.lo is not None and phys < self.lo - self.tol:
            return f"below the minimum of {self.where} ({_fmt(self.lo)}{self.unit})"
        if self.hi is not None and phys > self.hi + self.tol:
            return f"above the maximum of {self.where} ({_fmt(self.hi)}{self.unit})"
        return None

    def judge(self, bits: int | None, phys: float, value: PointValue | None
              ) -> PointValue | Invalid | None:
        """``value`` itself, or ``Invalid(value, why)``: called when the fast test fired."""
        reason = self.why(bits, phys)
        return value if reason is None else Invalid(value, reason)


def all_ff_frame(message: str) -> str:
    """Why the points of an all-0xFF frame are invalid."""
    return f"carried by an all-0xFF {message} frame (the node's not-available frame)"


def mark_frame_invalid(out: dict[str, PointValue | Invalid | None], why: str
                       ) -> dict[str, PointValue | Invalid | None]:
    """Every point of ``out`` invalid; a point already invalid keeps its own reason."""
    return {k: v if isinstance(v, Invalid) else Invalid(v, why) for k, v in out.items()}
