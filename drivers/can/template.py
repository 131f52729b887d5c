"""CAN device templates: a nature's points mapped to DBC messages and signals.

A template names a DBC file (relative to the template file, e.g. ``can/pylontech_bms.dbc``)
and maps each point to a signal of a periodic frame the device sends, and/or to a signal
of a command frame the gateway sends::

    soc_pct: {message: BMS_SOC, signal: SOC}
    i_pack_a: {message: BMS_Status, signal: PackCurrent, scale: -1}  # vendor: + = charging
    alarms: {message: BMS_Alarms, flags: [ProtectOverTemp, AlarmHighTemp]}  # bit i = flag i
    p_set_kw:
      message: Charger_Power        # read back from here
      signal: PowerSetpoint
      command: {message: EMS_ChargerControl, signal: PowerRequest}
      verify: equal                 # equal | at_most (device may apply less) | none

Point fields: message/signal (read), flags (read, several 1-bit signals into one int),
scale (physical DBC value * scale = point value), invert (bool points), enum (raw -> text;
default: the DBC's value table), command (write), verify. ``id_stride``: frame id offset
per unit id above 1, for several devices of one model on one bus (0 = one per bus).
DBC names are checked against the file when the template loads, with positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from cantools.database.can import Database, Message
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from drivers.can.connection import CanConnection
from drivers.can.dbc import DbcError, load_dbc, signal_of
from drivers.template_base import TEMPLATE_DIR, PlacedDevice, TemplateBase, nature_problems
from gateway.model import NATURES, Kind, Nature
from gateway.yamlsrc import Problem, Source


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanCommand(_Strict):
    message: str
    signal: str
    scale: float = 1.0  # point value / scale = physical DBC value sent


class CanPoint(_Strict):
    message: str | None = None
    signal: str | None = None
    flags: Annotated[list[str], Field(min_length=1, max_length=64)] | None = None
    scale: float = 1.0
    invert: bool = False  # a bool point carried as its negation (VehicleNotConnected)
    enum: dict[int, str] | None = None
    command: CanCommand | None = None
    verify: Literal["equal", "at_most", "none"] = "equal"

    @model_validator(mode="after")
    def _consistent(self) -> CanPoint:
        if self.message is None:
            if self.signal is not None or self.flags is not None:
                raise ValueError("'signal'/'flags' need 'message' (the frame that carries them)")
            if self.command is None:
                raise ValueError("give 'message' with 'signal' or 'flags' (read), and/or "
                                 "'command' (write)")
        elif (self.signal is None) == (self.flags is None):
            raise ValueError("give exactly one of 'signal' or 'flags' with 'message'")
        if self.scale == 0:
            raise ValueError("'scale' must not be 0")
        return self

    @property
    def readable(self) -> bool:
        return self.message is not None

    @property
    def access(self) -> str:
        if self.command is None:
            return "r"
        return "rw" if self.readable else "w"


class CanTemplate(TemplateBase):
    """A CAN device model: a DBC file and a point map."""

    protocol: Literal["can"] = "can"
    dbc: str
    id_stride: Annotated[int, Field(ge=0, le=0x1FFFFFFF)] = 0
    points: dict[str, CanPoint]
    _dbc_path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _points_exist(self) -> CanTemplate:
        problems = nature_problems(self.nature, {
            n: "has a 'command'" if p.command is not None else None
            for n, p in self.points.items()})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def writable(self) -> list[str]:
        return [n for n, p in self.points.items() if p.command is not None]

    @property
    def dbc_path(self) -> Path:
        """The DBC file: relative to the template file, else to drivers/templates."""
        if self._dbc_path is not None:
            return self._dbc_path
        return (TEMPLATE_DIR / self.dbc).resolve()

    @cached_property
    def database(self) -> Database:
        return load_dbc(self.dbc_path)

    def message(self, name: str) -> Message:
        return self.database.get_message_by_name(name)

    @classmethod
    def check_devices(cls, devices: Sequence[PlacedDevice], src: Source) -> list[Problem]:
        """Two devices on one CAN bus must not claim the same frame id (same model with
        ``id_stride: 0``, or unit ids that shift one onto the other)."""
        return _frame_clashes(devices, src)


    def check_source(self, src: Source) -> list[Problem]:
        """Check the DBC exists and defines every message/signal named; positioned."""
        base = Path(src.file).resolve().parent if src.file else TEMPLATE_DIR
        path = (base / self.dbc).resolve()
        object.__setattr__(self, "__pydantic_private__", {"_dbc_path": path})
        try:
            db = load_dbc(path)
        except DbcError as exc:
            return [src.problem(("dbc",), str(exc))]
        out: list[Problem] = []
        for name, pt in self.points.items():
            out.extend(_check_point(db, name, pt, self.nature, src))
        return out


def _find(db: Database, name: str, where: tuple[str | int, ...], src: Source,
          out: list[Problem]) -> Message | None:
    try:
        return db.get_message_by_name(name)
    except KeyError:
        known = ", ".join(sorted(m.name for m in db.messages))
        out.append(src.problem(where, f"message '{name}' is not in the DBC (known: {known})"))
        return None


def _check_point(db: Database, name: str, pt: CanPoint, nature: Nature, src: Source
                 ) -> list[Problem]:
    out: list[Problem] = []
    at = ("points", name)
    spec = NATURES[nature][name]
    if pt.message is not None:
        msg = _find(db, pt.message, (*at, "message"), src, out)
        if msg is not None:
            names = [pt.signal] if pt.signal is not None else list(pt.flags or [])
            for i, sig_name in enumerate(names):
                where = (*at, "signal") if pt.signal is not None else (*at, "flags", i)
                sig = signal_of(msg, sig_name)
                known = ", ".join(s.name for s in msg.signals)
                if sig is None:
                    out.append(src.problem(where, f"signal '{sig_name}' is not in message "
                                                  f"'{msg.name}' (known: {known})"))
                elif pt.flags is not None and sig.length != 1:
                    out.append(src.problem(where, f"flag '{sig_name}' is {sig.length} bits "
                                                  f"wide; flags must be 1-bit signals"))
                elif (spec.kind is Kind.STR and pt.enum is None and not sig.choices):
                    out.append(src.problem((*at, "signal"),
                                           f"'{name}' is a text point: give 'enum' or use a "
                                           f"signal with a DBC value table (VAL_)"))
            if pt.invert and spec.kind is not Kind.BOOL:
                out.append(src.problem((*at, "invert"), f"'{name}' is a {spec.kind} point; "
                                                        f"only bool points can be inverted"))
            if pt.flags is not None and spec.kind is not Kind.INT:
                out.append(src.problem((*at, "flags"), f"'{name}' is a {spec.kind} point; "
                                                       f"flags make an int"))
    if pt.command is not None:
        cmd_at = (*at, "command")
        msg = _find(db, pt.command.message, (*cmd_at, "message"), src, out)
        if msg is not None and signal_of(msg, pt.command.signal) is None:
            known = ", ".join(s.name for s in msg.signals)
            out.append(src.problem((*cmd_at, "signal"),
                                   f"signal '{pt.command.signal}' is not in message "
                                   f"'{msg.name}' (known: {known})"))
    return out


def _frame_clashes(devices: Sequence[PlacedDevice], src: Source) -> list[Problem]:
    out: list[Problem] = []
    owners: dict[tuple[str, int, bool], tuple[str, str]] = {}
    for i, dev, conn, tpl in devices:
        if not (isinstance(conn, CanConnection) and isinstance(tpl, CanTemplate)
                and dev.enabled):
            continue
        try:
            db = tpl.database
        except Exception:  # the template check reported it already
            continue
        names = {p.message for p in tpl.points.values() if p.message}
        offset = tpl.id_stride * max(dev.unit_id - 1, 0)
        for msg in db.messages:
            if msg.name not in names:
                continue
            fid = msg.frame_id + offset
            key = (conn.id, fid, msg.is_extended_frame)
            other = owners.get(key)
            if other is not None and other[0] != dev.id:
                out.append(src.problem(("devices", i, "unit_id"),
                                       f"frame 0x{fid:X} ({msg.name}) on CAN connection "
                                       f"'{conn.id}' is already sent by device '{other[0]}' "
                                       f"({other[1]}); give the devices different unit ids "
                                       f"(template id_stride {tpl.id_stride}) or separate buses"))
                break
            owners[key] = (dev.id, msg.name)
    return out
