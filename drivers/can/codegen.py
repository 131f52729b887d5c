"""Compile one message's point map into a single Python function (the decode hot path).

For a message, the points a device reads are turned into straight-line code: the payload
is read once as an int (little and/or big endian), each signal is a shift and a mask,
scaling is one division by a power of ten where that is exact (so 2301 reads 230.1) and
the template's scale, invert, enum and flags are applied inline. Each point is then checked
(drivers.can.validity): one comparison on the raw bits and one on the physical range per
frame; a value that cannot be true is returned as ``Invalid(value, why)``. Only numbers from the
DBC and the template go into the generated source; names are dict keys written with
repr(). Float and multiplexed signals call cantools instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cantools.database.can import Message, Signal

from drivers.can.dbc import Payload, compile_signal, decimals, fast_scale, lsb_shift, signal_of
from drivers.can.template import CanPoint
from drivers.can.validity import SignalCheck, all_ff_frame, mark_frame_invalid
from gateway.model import Invalid, Kind, PointValue

MessageDecoder = Callable[[Payload], dict[str, PointValue | Invalid | None]]


class _Gen:
    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {}
        self.uses_le = self.uses_be = False
        self._n = 0

    def var(self) -> str:
        self._n += 1
        return f"v{self._n}"

    def const(self, value: Any) -> str:
        name = f"k{len(self.ns)}"
        self.ns[name] = value
        return name

    def physical(self, sig: Signal) -> tuple[str, str, str]:
        """Statements computing the signal's unsigned raw bits, its integer raw value
        (signed if the signal is) and its physical value; returns their variables (bits
        and raw are "None" for float and multiplexed signals)."""
        v = self.var()
        if sig.is_float or self.msg.is_multiplexed():
            self.lines.append(f"{v} = {self.const(compile_signal(self.msg, sig))}(d)")
            return "None", "None", v
        big = sig.byte_order == "big_endian"
        src = "be" if big else "le"
        self.uses_be |= big
        self.uses_le |= not big
        shift, mask = lsb_shift(sig, self.msg.length), (1 << sig.length) - 1
        b = raw = self.var()
        self.lines.append(f"{b} = ({src} >> {shift}) & {mask}")
        if sig.is_signed:
            raw = self.var()
            self.lines.append(f"{raw} = {b} - {1 << sig.length} if {b} & "
                              f"{1 << (sig.length - 1)} else {b}")
        scale, offset = float(sig.scale), float(sig.offset)
        fast = fast_scale(scale, offset)
        if fast is not None:
            div, off = fast
            add = f" + {off}" if off else ""
            self.lines.append(f"{v} = ({raw}{add}) / {div}")
        else:
            self.lines.append(f"{v} = round({raw} * {scale!r} + {offset!r}, "
                              f"{decimals(scale, offset)})")
        return b, raw, v

    def point(self, name: str, pt: CanPoint, kind: Kind) -> None:
        key = repr(name)
        if pt.flags is not None:
            parts = []
            for bit, flag in enumerate(pt.flags):
                sig = signal_of(self.msg, flag)
                if sig is not None:  # 1-bit signals: no pattern, and 0..1 is all they carry
                    parts.append(f"({1 << bit} if {self.physical(sig)[2]} else 0)")
            self.lines.append(f"out[{key}] = {' | '.join(parts) or '0'}")
            return
        assert pt.signal is not None
        sig = signal_of(self.msg, pt.signal)
        assert sig is not None
        bits, raw, v = self.physical(sig)
        scale = pt.scale
        if kind is Kind.BOOL:
            expr = f"({v} == 0)" if pt.invert else f"({v} != 0)"
        elif kind is Kind.INT:
            expr = f"round({v} * {scale!r})"
        elif kind is Kind.STR:
            table = pt.enum or {int(k): str(t) for k, t in (sig.choices or {}).items()}
            expr = f"{self.const(table)}.get(int({v}))"
        elif scale == 1.0:
            expr = v
        elif scale == -1.0:
            expr = f"-{v} + 0.0"  # + 0.0: no -0.0
        else:
            places = decimals(float(sig.scale) * scale, float(sig.offset) * scale)
            expr = f"round({v} * {scale!r}, {places}) + 0.0"
        # a value that cannot be true becomes Invalid(value, why) (drivers.can.validity):
        # one chained comparison on the raw integer per point; the reason only on a miss
        check = SignalCheck.of(self.msg, sig)
        shown = v if kind is Kind.STR else expr  # an invalid enum shows its number
        fine = check.fast_valid(sig, raw, v)
        if fine is None:
            self.lines.append(f"out[{key}] = {expr}")
        else:
            self.lines.append(f"out[{key}] = {expr} if {fine} else "
                              f"{self.const(check.judge)}({bits}, {v}, {shown})")
        if kind is Kind.STR:
            why = f"not in the value table of {check.where}"
            self.lines.append(f"if out[{key}] is None: out[{key}] = INVALID({v}, {why!r})")


def compile_message(msg: Message, points: Sequence[tuple[str, CanPoint, Kind]]
                    ) -> MessageDecoder:
    """payload -> {point: value} for the points of one message."""
    gen = _Gen(msg)
    gen.lines.append("out = {}")
    for name, pt, kind in points:
        gen.point(name, pt, kind)
    ones = (1 << (8 * msg.length)) - 1  # the message's bytes all 0xFF (longer frames too)
    test = f"be == {ones}" if gen.uses_be else f"le & {ones} == {ones}"
    if not gen.uses_be and not gen.uses_le:  # float or multiplexed signals only
        test = f"d[:{msg.length}] == {gen.const(bytes([255]) * msg.length)}"
    gen.lines.append(f"if {test}: return MARK(out, {all_ff_frame(msg.name)!r})")
    head = []
    if gen.uses_le:
        head.append("le = int.from_bytes(d, 'little')")
    if gen.uses_be:
        head.append(f"be = int.from_bytes(d[:{msg.length}], 'big')")
    body = "\n    ".join([*head, *gen.lines, "return out"])
    source = f"def decode(d):\n    {body}\n"
    ns: dict[str, Any] = {**gen.ns, "__builtins__": {"round": round, "int": int},
                          "INF": math.inf, "INVALID": Invalid, "MARK": mark_frame_invalid}
    exec(compile(source, f"<can decoder {msg.name}>", "exec"), ns)
    decoder: MessageDecoder = ns["decode"]
    decoder.__doc__ = source  # for a curious reader: the generated code
    return decoder
