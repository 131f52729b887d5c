"""The ``linebus_tcp`` connection a site config names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from drivers.connection import ConnectionBase, PositiveS, host_problems, network_endpoint
from gateway.yamlsrc import Problem, Source


class LineBusTcp(ConnectionBase):
    """A linebus device server reached over TCP."""

    type: Literal["linebus_tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 7070
    timeout_s: PositiveS = 1.0

    def endpoint(self) -> tuple[tuple[str, ...], str] | None:
        return network_endpoint(self.host, self.port)

    def check(self, index: int, src: Source) -> list[Problem]:
        return super().check(index, src) + host_problems(
            self.host, index, src, serial_hint="linebus runs over TCP only")
