"""SunSpec register maps computed from pysunspec2's shipped model definitions (JSON).

The simulator lays out a SunSpec model chain ('SunS', model 1, 103, ..., end model) from
the same definitions every SunSpec client uses, so addresses are never typed by hand.
A template's addresses are checked against :func:`layout` in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import sunspec2

MODELS_JSON_DIR = Path(sunspec2.__file__).parent / "models" / "json"
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL = (0xFFFF, 0)
# Inverter chain: common, three-phase inverter, nameplate ratings, immediate controls.
INVERTER_CHAIN = (1, 103, 120, 123)

# Register value meaning "not implemented", by SunSpec point type (SunSpec spec, table 7).
_NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000, "uint16": 0xFFFF, "count": 0, "acc16": 0, "enum16": 0xFFFF,
    "bitfield16": 0xFFFF, "pad": 0x8000, "sunssf": 0x8000,
    "int32": 0x8000_0000, "uint32": 0xFFFF_FFFF, "acc32": 0, "enum32": 0xFFFF_FFFF,
    "bitfield32": 0xFFFF_FFFF, "float32": 0x7FC0_0000, "ipaddr": 0,
    "int64": 0x8000_0000_0000_0000, "uint64": 0xFFFF_FFFF_FFFF_FFFF, "acc64": 0,
}


@dataclass(frozen=True, slots=True)
class SunSpecPoint:
    """One point of a laid-out model: absolute wire address (0-based) and width."""

    model_id: int
    name: str
    type: str
    size: int  # registers
    address: int
    sf: str | None = None
    access: str = "R"


@dataclass
class SunSpecLayout:
    """Addresses of every point of a model chain starting at ``base``."""

    base: int
    models: dict[int, int] = field(default_factory=dict)  # model id -> address of its ID
    lengths: dict[int, int] = field(default_factory=dict)  # model id -> L
    points: dict[tuple[int, str], SunSpecPoint] = field(default_factory=dict)
    end: int = 0  # address of the end model's 0xFFFF

    def address(self, model_id: int, point: str) -> int:
        """Wire address of ``point`` in ``model_id`` (KeyError names what is known)."""
        try:
            return self.points[(model_id, point)].address
        except KeyError:
            raise KeyError(f"SunSpec model {model_id} has no point '{point}' in this chain "
                           f"(models: {sorted(self.models)})") from None

    def point_at(self, address: int) -> SunSpecPoint | None:
        for p in self.points.values():
            if p.address <= address < p.address + p.size:
                return p
        return None


@cache
def model_definition(model_id: int) -> dict[str, Any]:
    """The JSON definition of a SunSpec model as shipped with pysunspec2."""
    path = MODELS_JSON_DIR / f"model_{model_id}.json"
    if not path.is_file():
        raise KeyError(f"pysunspec2 ships no definition for SunSpec model {model_id} "
                       f"(looked in {MODELS_JSON_DIR})")
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    if data["group"].get("groups"):
        raise ValueError(f"SunSpec model {model_id} has repeating groups; not supported")
    return data


def layout(chain: tuple[int, ...] = INVERTER_CHAIN, base: int = 40000) -> SunSpecLayout:
    """Lay out ``chain`` after the 'SunS' marker at ``base``; ID and L open each model."""
    out = SunSpecLayout(base=base)
    addr = base + 2
    for model_id in chain:
        points = model_definition(model_id)["group"]["points"]
        out.models[model_id] = addr
        offset = addr
        for p in points:
            size = int(p.get("size", 1))
            out.points[(model_id, p["name"])] = SunSpecPoint(
                model_id, p["name"], p["type"], size, offset, p.get("sf"), p.get("access", "R"))
            offset += size
        length = offset - addr - 2  # L excludes ID and L themselves
        out.lengths[model_id] = length
        addr = offset
    out.end = addr
    return out


def _string_words(text: str, size: int) -> list[int]:
    data = text.encode("ascii", "replace")[: 2 * size].ljust(2 * size, b"\x00")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, 2 * size, 2)]


def _int_words(value: int, size: int) -> list[int]:
    return [(value >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def image(lay: SunSpecLayout, strings: dict[tuple[int, str], str] | None = None,
          values: dict[tuple[int, str], int] | None = None) -> dict[int, int]:
    """Register content of the whole chain: marker, IDs, lengths, strings, given raw
    values, every other point "not implemented", then the end model."""
    strings = strings or {}
    values = values or {}
    regs: dict[int, int] = {lay.base: SUNS_MARKER[0], lay.base + 1: SUNS_MARKER[1]}
    for (model_id, name), p in lay.points.items():
        if name == "ID":
            words = [model_id]
        elif name == "L":
            words = [lay.lengths[model_id]]
        elif p.type == "string":
            words = _string_words(strings.get((model_id, name), ""), p.size)
        elif (model_id, name) in values:
            words = _int_words(values[(model_id, name)], p.size)
        else:
            words = _int_words(_NOT_IMPLEMENTED.get(p.type, 0), p.size)
        for i, w in enumerate(words):
            regs[p.address + i] = w
    regs[lay.end], regs[lay.end + 1] = END_MODEL
    return regs
