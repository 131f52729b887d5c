"""What every ``connections[]`` entry of a site config is, whatever driver serves it.

Each driver declares its own connection models (subclasses of ``ConnectionBase`` with a
``type: Literal[...]`` discriminator) to the registry; the site config's connection union
is built from those declarations, so a plug-in's connection needs no change here. The
class variables and methods below are what the site checks ask every connection, so
they stay free of any one protocol.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from gateway.yamlsrc import Problem, Source

Id = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
                          description="letters, digits, '_', '.', '-'; starts with a letter")]
PositiveS = Annotated[float, Field(gt=0, le=3600)]
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")


class ConnectionBase(BaseModel):
    """One physical link as a site config names it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    type: str  # a subclass narrows it to Literal["its_type"]: the union's discriminator
    id: Id

    # Devices on one connection are told apart by unit id (Modbus), not by their
    # templates (CAN frame ids) or by sharing one association (DNP3).
    unit_ids_unique: ClassVar[bool] = True
    unit_zero_is_broadcast: ClassVar[bool] = False  # a serial bus: unit 0 never answers
    one_box: ClassVar[bool] = False  # wired to one gateway (a serial port)

    @classmethod
    def type_name(cls) -> str:
        """The ``type:`` value that selects this model (from its Literal annotation)."""
        args = typing.get_args(cls.model_fields["type"].annotation)
        if len(args) != 1 or not isinstance(args[0], str):
            raise TypeError(f"{cls.__name__}.type must be a Literal of one string")
        return args[0]

    def endpoint(self) -> tuple[tuple[str, ...], str] | None:
        """The physical endpoint (a key, and how to name it), so two connections cannot
        name the same one; None when the idea does not apply."""
        return None

    def for_gateway(self, gateway_id: str) -> Self:
        """This connection as gateway ``gateway_id`` uses it (options given per gateway
        resolved to that gateway's value); most connections are the same everywhere."""
        return self

    def gateway_refs(self) -> dict[tuple[str, ...], list[str]]:
        """Gateway ids this connection names (field path below it -> ids), so the site
        checks can refuse unknown ones."""
        return {}

    def check(self, index: int, src: Source) -> list[Problem]:
        """Cross-field problems of this connection, positioned at ``connections[index]``."""
        out: list[Problem] = []
        first = getattr(self, "reconnect_delay_s", None)
        cap = getattr(self, "reconnect_delay_max_s", None)
        if isinstance(first, float) and isinstance(cap, float) and cap < first:
            out.append(src.problem(("connections", index, "reconnect_delay_max_s"),
                                   f"must be at least reconnect_delay_s ({first:g} s), "
                                   f"found {cap:g} s"))
        return out


def host_problems(host: str, index: int, src: Source, *, serial_hint: str) -> list[Problem]:
    """A network connection's ``host`` is a bare host name or address: not a serial
    device (``serial_hint`` says what to use instead), a URL or host:port."""
    here = ("connections", index, "host")
    if host.startswith("/dev/") or re.fullmatch(r"COM\d+", host):
        return [src.problem(here, f"'{host}' is a serial device: "
                                  f"{serial_hint.format(host=host)}")]
    if "://" in host or (re.search(r":\d+$", host) and host.count(":") == 1):
        return [src.problem(here, f"expected a bare host name or IP address (found "
                                  f"'{host}'); put the port number in 'port'")]
    if not HOST.match(host):
        return [src.problem(here, f"expected a host name or IP address (found '{host}')")]
    return []


def network_endpoint(host: str, port: int) -> tuple[tuple[str, ...], str]:
    """The endpoint key of host:port (one connection per endpoint, whatever protocol)."""
    return ("net", host.lower(), str(port)), f"{host}:{port}"
