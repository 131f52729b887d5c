"""The bases every protocol's template model extends, and what template checks see.

A template model is ``TemplateBase`` with its protocol's ``Literal`` and point model; the
point checks every protocol shares (a point of the nature, written only where the nature
allows) are ``nature_problems``. Kept apart from the loader (drivers.template) so a
driver's template module depends on nothing but this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from gateway.model import NATURES, Nature
from gateway.yamlsrc import Problem, Source

if TYPE_CHECKING:
    from drivers.connection import ConnectionBase

TEMPLATE_DIR = Path(__file__).parent / "templates"


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
