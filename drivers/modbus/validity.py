"""Values that cannot be true become ``Invalid``, so control never takes them as good.

A point that decodes to "no value" (its not-implemented pattern, a scale factor that is
not implemented, a float that is not a number) is None only when the template marks it
``optional``; on a mandatory point (soc_pct, p_kw, f_hz, ...) it is Invalid. A number
outside the template's ``min``/``max`` is Invalid. Each episode is logged once per
device and point, and its end once ("valid again").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from drivers.template import ModbusPoint, ModbusTemplate, RegType
from gateway.model import NATURES, Invalid, PointValue

log = logging.getLogger("drivers.modbus")


def wire_value(point: ModbusPoint, regs: Sequence[int], offset: int) -> int:
    """The point's registers as the unsigned integer on the wire (for diagnostics)."""
    if point.function.is_bit:
        return int(bool(regs[offset]))
    words = [int(w) for w in regs[offset:offset + point.width]]
    if point.word_order == "little":
        words.reverse()
    out = 0
    for w in words:
        out = (out << 16) | w
    return out


class Validity:
    """Checks one device's decoded values and remembers which points are invalid now."""

    def __init__(self, device_id: str, template: ModbusTemplate, names: Iterable[str]) -> None:
        self.device_id = device_id
        self._points = template.points
        self._units = {n: s.unit for n, s in NATURES[template.nature].items()}
        self.ranged = frozenset(n for n in names if self._points[n].min is not None
                                or self._points[n].max is not None)
        self.invalid: dict[str, str] = {}  # point -> why, while its episode lasts

    def check(self, name: str, value: PointValue | None, regs: Sequence[int], offset: int,
              missing_sf: int | None) -> PointValue | Invalid | None:
        """``value`` as decoded (None: no value), or the Invalid it really is.

        ``missing_sf``: the address of the point's scale factor when that read 0x8000.
        """
        pt = self._points[name]
        if value is None:
            if pt.optional:
                return None
            raw = wire_value(pt, regs, offset)
            digits = 4 * pt.width
            if missing_sf is not None:
                why = f"scale factor register {missing_sf} reads 0x8000 (not implemented)"
            elif pt.type is RegType.FLOAT32:
                why = f"0x{raw:0{digits}X} (not a number)"
            else:
                why = f"0x{raw:0{digits}X} (not implemented)"
            return self._invalid(name, Invalid(raw, why))
        if (isinstance(value, int | float) and not isinstance(value, bool)
                and ((pt.min is not None and value < pt.min)
                     or (pt.max is not None and value > pt.max))):
            unit = self._units.get(name, "")
            shown = round(float(value), 6)
            return self._invalid(name, Invalid(value, f"{shown} outside {pt.range_text()}"
                                                      f"{' ' + unit if unit else ''}"))
        return value

    def _invalid(self, name: str, bad: Invalid) -> Invalid:
        if name not in self.invalid:
            log.warning("%s: %s = %s: marked invalid", self.device_id, name, bad.why)
        self.invalid[name] = bad.why
        return bad

    def settle(self, out: Mapping[str, PointValue | Invalid | None]) -> None:
        """End the episodes of points that read valid again (one line each)."""
        for name in list(self.invalid):
            value = out.get(name)
            if name in out and not isinstance(value, Invalid):
                del self.invalid[name]
                log.info("%s: %s valid again (%s)", self.device_id, name, value)
