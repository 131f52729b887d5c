"""The DNP3 connection of a site config: one outstation over TCP (IEEE 1815), declared
to the registry by the dnp3 driver.

One ``dnp3_tcp`` connection is one association: a master address talking to one
outstation address at host:port. Several devices may share it (e.g. the breaker and the
meter of one PCC relay); they share its link, its lock and its polls.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.connection import ConnectionBase, host_problems, network_endpoint
from gateway.yamlsrc import Problem, Source

_S = Annotated[float, Field(gt=0, le=3600)]
_PollS = Annotated[float, Field(ge=0, le=86400)]  # 0 = never


class Dnp3Tcp(ConnectionBase):
    """A DNP3 outstation reached over TCP (the usual port is 20000)."""

    unit_ids_unique: ClassVar[bool] = False  # devices share the one association

    type: Literal["dnp3_tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 20000
    master_address: Annotated[int, Field(ge=0, le=65519)] = 1
    outstation_address: Annotated[int, Field(ge=0, le=65519)] = 10
    # The same names as every other connection, so tools can read them alike.
    timeout_s: _S = 2.0  # application response timeout (whole request/response exchange)
    link_timeout_s: _S = 1.0  # TCP connect timeout
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    reconnect_delay_s: _S = 0.5  # first delay after a lost link; doubles each try
    reconnect_delay_max_s: _S = 30.0
    # Polls: an integrity poll (class 0123) at connect and after every reconnect, then
    # every integrity_interval_s; event polls per class at their own intervals.
    integrity_interval_s: _PollS = 300.0
    class1_interval_s: _PollS = 1.0
    class2_interval_s: _PollS = 5.0
    class3_interval_s: _PollS = 30.0
    unsolicited: bool = False  # ask the outstation to report events unsolicited
    sbo_select_timeout_s: _S = 5.0  # how long a SELECT may wait for its OPERATE
    # How long a command's effect may take to show in its read-back (a breaker's status
    # after a trip/close), counted from the outstation's SUCCESS.
    command_timeout_s: _S = 5.0
    # Time synchronisation when the outstation asks (IIN1.4 NEED_TIME): "lan" is
    # RECORD_CURRENT_TIME + g50v3 (IEEE 1815-2012 10.3.3.2, the procedure for TCP),
    # "non_lan" DELAY_MEASURE + g50v1 (10.3.3.1, serial or routed links), "off" never.
    time_sync: Literal["lan", "non_lan", "off"] = "lan"

    def endpoint(self) -> tuple[tuple[str, ...], str] | None:
        return network_endpoint(self.host, self.port)

    def check(self, index: int, src: Source) -> list[Problem]:
        return super().check(index, src) + host_problems(
            self.host, index, src, serial_hint="DNP3 here runs over TCP ('dnp3_tcp')")

    @model_validator(mode="after")
    def _backoff(self) -> Dnp3Tcp:
        if self.reconnect_delay_max_s < self.reconnect_delay_s:
            raise ValueError(f"reconnect_delay_max_s ({self.reconnect_delay_max_s:g}) is less "
                             f"than reconnect_delay_s ({self.reconnect_delay_s:g})")
        if self.master_address == self.outstation_address:
            raise ValueError(f"master_address and outstation_address are both "
                             f"{self.master_address}; a link needs two different addresses")
        return self
