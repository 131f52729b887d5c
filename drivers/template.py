"""Device templates: a device model described as data, validated on load.

A template maps the standard points of one nature (gateway.model.NATURES) to protocol
addresses. Code exists per protocol, never per device model. Each driver declares its
template model (a ``TemplateBase``) to the registry under its protocol name, and a
template file says which protocol it speaks (``protocol:``, default ``modbus``). Built-in
templates live in ``drivers/templates/*.yaml``; the file stem is the template name used
in site configs. The Modbus model is in ``drivers.modbus.template`` (its names are still
importable from here).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from gateway.model import NATURES, Nature
from gateway.yamlsrc import Problem, Source, SourceError, load_yaml_file, parse_model

if TYPE_CHECKING:
    from drivers.connection import ConnectionBase
    from drivers.modbus.template import (  # noqa: F401  (names kept importable from here)
        Access,
        Function,
        ModbusPoint,
        ModbusTemplate,
        RegType,
    )

TEMPLATE_DIR = Path(__file__).parent / "templates"
_MOVED = {"Access", "Function", "ModbusPoint", "ModbusTemplate", "RegType"}


def __getattr__(name: str) -> Any:
    """The Modbus template names, now in drivers.modbus.template, for older imports."""
    if name in _MOVED:
        return getattr(importlib.import_module("drivers.modbus.template"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StrictTemplatePart(BaseModel):
    """A part of a template: unknown keys are errors, loaded once and never changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(Protocol):
    """What a driver and a template check see of a configured device
    (``gateway.config.models.Device`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def unit_id(self) -> int: ...
    @property
    def points(self) -> list[str] | None: ...
    @property
    def enabled(self) -> bool: ...


class PlacedDevice(NamedTuple):
    """A device of a site config with its index there, its connection and its template."""

    at: int  # its index in devices[]
    device: DeviceSpec
    connection: ConnectionBase
    template: Any  # the protocol's TemplateBase subclass


class TemplateBase(StrictTemplatePart):
    """Every template model: ``protocol`` (its discriminator), ``nature`` and ``points``.

    A subclass narrows ``protocol`` to its Literal and ``points`` to its point model.
    """

    protocol: str
    nature: Nature
    manufacturer: str = ""
    model: str = ""
    description: str = ""
    points: Mapping[str, Any]

    @property
    def writable(self) -> list[str]:
        """The points a write may name."""
        return []

    def check_source(self, src: Source) -> list[Problem]:
        """Cross-point problems of this template (overlaps, DBC names), positioned."""
        return []

    @classmethod
    def check_devices(cls, devices: Sequence[PlacedDevice], src: Source) -> list[Problem]:
        """Problems between the site's devices of this protocol (e.g. two CAN devices
        sending one frame id), positioned in the site config."""
        return []


def nature_problems(nature: Nature, written: Mapping[str, str | None]) -> list[str]:
    """The point checks every protocol shares: each point is one of its nature's, and
    only points the nature lets be written are written. ``written`` maps a point name
    to how the template writes it ("access is 'rw'", "has a 'command'") or None."""
    specs = NATURES[nature]
    problems = []
    for name, how in written.items():
        spec = specs.get(name)
        if spec is None:
            problems.append(f"'{name}' is not a point of nature '{nature}' "
                            f"(known: {', '.join(sorted(specs))})")
        elif how is not None and not spec.writable:
            problems.append(f"'{name}' is read-only in nature '{nature}' but {how}")
    return problems


Template = Any  # a TemplateBase subclass instance: the protocol's own model


def template_model(protocol: str) -> type[TemplateBase]:
    """The template model the driver of ``protocol`` declared; KeyError if none did."""
    from drivers import registry  # the registry imports this module's TemplateBase

    return registry.template_model(protocol)


def known_protocols() -> list[str]:
    from drivers import registry

    return registry.protocols()


def load_template_file(path: str | Path) -> Template:
    """Load and validate one template file; raise SourceError listing every problem."""
    src = load_yaml_file(path)
    if not isinstance(src.data, dict):
        raise SourceError([Problem(src.file, src.mark(()), "",
                                   "a template must be a mapping with 'nature' and 'points'")])
    return template_from_source(src)


def template_from_source(src: Source) -> Template:
    """Validate parsed template data with its protocol's model and its own checks."""
    protocol = src.data.get("protocol", "modbus")
    try:
        model = template_model(str(protocol))
    except KeyError:
        raise SourceError([src.problem(("protocol",), f"unknown protocol {protocol!r} (known: "
                                       f"{', '.join(known_protocols())})")]) from None
    tpl = parse_model(model, src)
    problems = tpl.check_source(src)
    if problems:
        raise SourceError(problems)
    return tpl


def template_names(directory: Path = TEMPLATE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


@cache
def load_template(name: str) -> Template:
    """The built-in template called ``name`` (file stem under drivers/templates)."""
    path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown template '{name}' (known: {', '.join(template_names())})")
    return load_template_file(path)
