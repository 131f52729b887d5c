"""DNP3 templates: a device's point map (group, index, scale, event class) as data.

A point is read from a static group the outstation reports in its integrity poll and
events, and may carry a ``command``: the control object a write sends.

Read groups:   1 binary input, 3 double-bit input, 10 binary output status,
               20 counter, 30 analog input, 40 analog output status
Command:       group 12 (CROB) or 41 (analog output; variation 3 = float32, the default,
               so 12.5 kW arrives as 12.5), mode direct (Direct Operate) or sbo
               (Select Before Operate), CROB codes for true and for false, and
               ``read_back``: the point whose value shows the command took effect
               (a breaker's ``closed`` after trip/close), checked after every SUCCESS
value = raw * scale (read); the analog command sends value / scale.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from drivers.template_base import TemplateBase, nature_problems
from gateway.model import NATURES, Kind
from gateway.yamlsrc import Problem, Source

READ_GROUPS = {1: "binary input", 3: "double-bit input", 10: "binary output status",
               20: "counter", 30: "analog input", 40: "analog output status"}
BINARY_GROUPS = frozenset({1, 3, 10})


class CrobCode(enum.StrEnum):
    """What a CROB does (IEEE 1815 g12v1 control code: op type plus trip/close code)."""

    LATCH_ON = "latch_on"
    LATCH_OFF = "latch_off"
    PULSE_ON = "pulse_on"
    PULSE_OFF = "pulse_off"
    TRIP = "trip"  # pulse on with trip/close code TRIP
    CLOSE = "close"  # pulse on with trip/close code CLOSE

    @property
    def wire(self) -> int:
        return {"latch_on": 0x03, "latch_off": 0x04, "pulse_on": 0x01, "pulse_off": 0x02,
                "trip": 0x81, "close": 0x41}[self.value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Index = Annotated[int, Field(ge=0, le=65535)]


class ReadBack(_Strict):
    """Where a command's effect shows: ``point`` reads ``value`` once it took effect."""

    point: str
    value: bool | float | str


class Dnp3Command(_Strict):
    """The control object written for a point."""

    group: Literal[12, 41]
    index: Index
    variation: Literal[1, 2, 3, 4] | None = None  # g41: 1 int32, 2 int16, 3 float32, 4 double
    mode: Literal["direct", "sbo"] = "direct"
    code_true: CrobCode | None = None  # CROB sent for true (default latch_on)
    code_false: CrobCode | None = None  # CROB for false (default latch_off; trip/close/pulse: none)
    on_time_ms: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    off_time_ms: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    scale: float = 1.0  # analog: the wire carries value / scale
    read_back: ReadBack | None = None  # a CROB's effect, verified after SUCCESS

    @model_validator(mode="after")
    def _consistent(self) -> Dnp3Command:
        if self.group == 41 and (self.code_true is not None or self.code_false is not None):
            raise ValueError("'code_true'/'code_false' are CROB codes; an analog output "
                             "(group 41) sends the value itself")
        if self.group == 12 and self.variation not in (None, 1):
            raise ValueError(f"a CROB is group 12 variation 1 (found variation "
                             f"{self.variation})")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    @property
    def ao_variation(self) -> int:
        return self.variation or 3

    def crob_for(self, value: bool) -> CrobCode | None:
        if value:
            return self.code_true or CrobCode.LATCH_ON
        if self.code_true in (CrobCode.TRIP, CrobCode.CLOSE, CrobCode.PULSE_ON) \
                and self.code_false is None:
            return None  # a trip/close/pulse command has nothing to do for false
        return self.code_false or CrobCode.LATCH_OFF


class Dnp3Point(_Strict):
    group: Literal[1, 3, 10, 20, 30, 40] | None = None  # where the value is read from
    index: Index | None = None
    scale: float = 1.0
    event_class: Annotated[int, Field(ge=0, le=3, alias="class")] = 0  # 0 = static only
    deadband: Annotated[float, Field(ge=0)] = 0.0  # raw units; simulator's event threshold
    enum: dict[int, str] | None = None
    command: Dnp3Command | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Dnp3Point:
        if (self.group is None) != (self.index is None):
            raise ValueError("give 'group' and 'index' together (where the value is read)")
        if self.group is None and self.command is None:
            raise ValueError("a point needs 'group'+'index' (read), a 'command' (write), "
                             "or both")
        if self.group in BINARY_GROUPS and self.scale != 1.0:
            raise ValueError(f"group {self.group} ({READ_GROUPS[self.group]}) is on/off; "
                             f"'scale' does not apply")
        return self

    @property
    def readable(self) -> bool:
        return self.group is not None


class Dnp3Template(TemplateBase):
    """A DNP3 device model: the outstation points of one nature."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    protocol: Literal["dnp3"]
    points: dict[str, Dnp3Point]

    @field_validator("points")
    @classmethod
    def _points_exist(cls, points: dict[str, Dnp3Point], info: ValidationInfo
                      ) -> dict[str, Dnp3Point]:
        nature = info.data.get("nature")
        if nature is None:
            return points
        specs = NATURES[nature]
        problems = nature_problems(nature, {
            n: "has a 'command'" if p.command is not None else None for n, p in points.items()})
        for name, pt in points.items():
            spec = specs.get(name)
            if spec is None:
                continue
            if spec.kind is Kind.STR and pt.enum is None:
                problems.append(f"'{name}' is a text point: give it 'enum'")
            if pt.command is not None:
                if spec.kind is Kind.BOOL and pt.command.group != 12:
                    problems.append(f"'{name}' is on/off: its command must be a CROB "
                                    f"(group 12)")
                if spec.kind in (Kind.FLOAT, Kind.INT) and pt.command.group != 41:
                    problems.append(f"'{name}' is a number: its command must be an analog "
                                    f"output (group 41)")
                rb = pt.command.read_back
                target = points.get(rb.point) if rb is not None else None
                if rb is not None and (target is None or not target.readable):
                    problems.append(f"'{name}': read_back point '{rb.point}' is not a "
                                    f"readable point of this template")
        if problems:
            raise ValueError("; ".join(problems))
        return points

    @property
    def writable(self) -> list[str]:
        return [n for n, p in self.points.items() if p.command is not None]

    def check_source(self, src: Source) -> list[Problem]:
        """Two points on one (group, index), or two commands on one output: positioned."""
        problems: list[Problem] = []
        taken: dict[tuple[int, int], str] = {}
        commands: dict[tuple[int, int], str] = {}
        for name, pt in self.points.items():
            if pt.group is not None and pt.index is not None:
                other = taken.setdefault((pt.group, pt.index), name)
                if other != name:
                    problems.append(src.problem(
                        ("points", name, "index"),
                        f"group {pt.group} index {pt.index} is already point '{other}'"))
            cmd = pt.command
            if cmd is None:
                continue
            other = commands.setdefault((cmd.group, cmd.index), name)
            if other != name and not _trip_close_pair(cmd, self.points[other].command):
                problems.append(src.problem(
                    ("points", name, "command", "index"),
                    f"group {cmd.group} index {cmd.index} is already commanded by "
                    f"point '{other}'"))
        return problems


def _trip_close_pair(a: Dnp3Command, b: Dnp3Command | None) -> bool:
    """Trip and close may share one CROB index: the trip/close code picks the coil."""
    return (b is not None and a.group == 12 and b.group == 12
            and {a.code_true, b.code_true} == {CrobCode.TRIP, CrobCode.CLOSE})
