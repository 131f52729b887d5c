"""Modbus templates: a device model's registers as data (declared by the modbus driver).

Modbus point fields:
  address   register (or coil) address, 0-based as sent on the wire
  function  holding | input | coil | discrete
  type      int16 | uint16 | int32 | uint32 | float32 | string | bool
  count     registers for a string (2 characters each)
  word_order  big (high word first, default) | little, for 32-bit types
  scale     raw * scale = value in the point's unit (default 1)
  scale_factor  address of a SunSpec scale-factor register (int16 exponent of 10,
            holding); value = raw * 10**sf * scale
  access    r | rw | w
  enum      raw integer -> string, for state-like points
  not_implemented  raw value meaning "no value": SunSpec int16 0x8000, uint16/enum16
            0xFFFF, int32 0x80000000, uint32 0xFFFFFFFF, acc16/acc32 0 (a scale factor
            register reading 0x8000 is always "not implemented")
  optional  the device may lack this point: its not-implemented value reads as no value
            (None). Without it the point is mandatory and that value reads as invalid.
  min, max  the range a true value lies in (engineering units, after scaling), from
            the vendor's datasheet; a value outside it reads as invalid
The vendor's own register name goes in a YAML comment on the address line.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drivers.template_base import StrictTemplatePart, TemplateBase, nature_problems
from gateway.model import NATURES, Kind
from gateway.yamlsrc import Problem, Source


class Function(enum.StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bit(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)


class RegType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    STRING = "string"
    BOOL = "bool"  # a coil/discrete input, or a 16-bit register read as != 0

    def registers(self, count: int | None) -> int:
        if self in (RegType.INT32, RegType.UINT32, RegType.FLOAT32):
            return 2
        if self is RegType.STRING:
            return count or 1
        return 1


class Access(enum.StrEnum):
    R = "r"
    RW = "rw"
    W = "w"


class ModbusPoint(StrictTemplatePart):
    address: Annotated[int, Field(ge=0, le=65535)]
    function: Function = Function.HOLDING
    type: RegType = RegType.UINT16
    count: Annotated[int, Field(ge=1, le=125)] | None = None
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    scale_factor: Annotated[int, Field(ge=0, le=65535)] | None = None
    access: Access = Access.R
    enum: dict[int, str] | None = None
    not_implemented: int | None = None
    optional: bool = False
    min: float | None = None
    max: float | None = None

    @property
    def width(self) -> int:
        """Registers (or bits) this point occupies."""
        return 1 if self.function.is_bit else self.type.registers(self.count)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        if self.function.is_bit and self.type is not RegType.BOOL:
            raise ValueError(f"function '{self.function}' carries single bits, so type must be "
                             f"'bool' (found '{self.type}')")
        if self.type is RegType.STRING and self.count is None:
            raise ValueError("type 'string' needs 'count' (registers, 2 characters each)")
        if self.function in (Function.INPUT, Function.DISCRETE) and self.access is not Access.R:
            raise ValueError(f"function '{self.function}' is read-only on the wire, so access "
                             f"must be 'r' (found '{self.access}')")
        if self.address + self.width - 1 > 65535:
            raise ValueError(f"address {self.address} + {self.width} registers runs past 65535")
        if self.min is not None or self.max is not None:
            if self.type in (RegType.STRING, RegType.BOOL) or self.enum is not None:
                raise ValueError("'min'/'max' apply to numbers only (this point is "
                                 f"{'an enum' if self.enum is not None else self.type})")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def range_text(self) -> str:
        """The valid range as operators read it: "0..100", ">= 0", "<= 65"."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


class ModbusTemplate(TemplateBase):
    """A Modbus device model."""

    protocol: Literal["modbus"] = "modbus"
    sunspec: bool = False  # the device carries a SunSpec model chain (SunS at base)
    sunspec_base: int = 40000
    max_registers_per_read: Annotated[int, Field(ge=1, le=125)] = 125
    points: dict[str, ModbusPoint]
    # Registers the simulator exposes with fixed content (SunSpec common model strings,
    # scale factors). address -> value; not polled unless a point needs it.
    constants: dict[int, int] = Field(default_factory=dict)

    @field_validator("points")
    @classmethod
    def _points_exist(cls, points: dict[str, ModbusPoint], info: ValidationInfo
                      ) -> dict[str, ModbusPoint]:
        nature = info.data.get("nature")
        if nature is None:
            return points
        problems = nature_problems(nature, {
            n: f"access is '{p.access}'" if p.access is not Access.R else None
            for n, p in points.items()})
        specs = NATURES[nature]
        for name, pt in points.items():
            spec = specs.get(name)
            if spec is not None and spec.kind is Kind.STR and pt.enum is None \
                    and pt.type is not RegType.STRING:
                problems.append(f"'{name}' is a text point: give it 'enum' or type 'string'")
        if problems:
            raise ValueError("; ".join(problems))
        return points

    @property
    def writable(self) -> list[str]:
        return [n for n, p in self.points.items() if p.access is not Access.R]

    def check_source(self, src: Source) -> list[Problem]:
        return _check_overlaps(self, src)


def _check_overlaps(tpl: ModbusTemplate, src: Source) -> list[Problem]:
    """Two points on one register (or bit) of one table."""
    problems: list[Problem] = []
    taken: dict[tuple[bool, int], str] = {}
    for name, pt in tpl.points.items():
        table = pt.function in (Function.HOLDING, Function.COIL)
        for addr in range(pt.address, pt.address + pt.width):
            key = (table, addr) if not pt.function.is_bit else (table, -addr - 1)
            other = taken.get(key)
            if other is not None and other != name:
                problems.append(src.problem(("points", name, "address"),
                                            f"register {addr} overlaps point '{other}'"))
                break
            taken[key] = name
    return problems
