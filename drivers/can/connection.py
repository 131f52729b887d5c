"""The CAN connection (site config ``connections[]`` with ``type: can``) and its checks.

One connection is one CAN bus as the gateway sees it: a python-can interface and channel.
``socketcan`` is production (can0, vcan0), ``slcan`` a USB-serial adapter or the
simulator's pseudo-terminal, ``udp_multicast`` and ``virtual`` are for simulation and
tests (udp_multicast only when loopback carries the group; see drivers.can.link).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from drivers.connection import ConnectionBase, PositiveS
from gateway.yamlsrc import Problem, Source

CAN_INTERFACES = ("socketcan", "slcan", "udp_multicast", "virtual")
BITRATES = (10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000, 1_000_000)


class CanConnection(ConnectionBase):
    """A CAN bus. Devices on it are told apart by their templates' frame ids."""

    unit_ids_unique: ClassVar[bool] = False  # frame ids are checked instead

    type: Literal["can"]
    interface: Literal["socketcan", "slcan", "udp_multicast", "virtual"]
    channel: str  # can0 | /dev/ttyACM0 (or the simulator's pty link) | multicast group | name
    bitrate: Literal[10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000,
                     1_000_000] = 500_000
    # A periodic frame older than this makes its device's read fail (device offline).
    frame_timeout_s: PositiveS = 3.0
    timeout_s: PositiveS = 1.0  # sending one command frame
    reconnect_delay_s: PositiveS = 0.5  # first delay after a lost bus; doubles each try
    reconnect_delay_max_s: PositiveS = 30.0
    # slcan: wait after opening the serial port (adapters that reset on open need ~2 s).
    open_delay_s: Annotated[float, Field(ge=0, le=10)] = 0.0

    def check(self, index: int, src: Source) -> list[Problem]:
        """Cross-field checks of one CAN connection, positioned."""
        out = super().check(index, src)
        ch = self.channel
        if self.interface == "slcan" and not (ch.startswith("/") or ch.upper().startswith("COM")
                                              or "://" in ch):
            out.append(src.problem(("connections", index, "channel"),
                                   f"slcan needs a serial device path (e.g. /dev/ttyACM0 or "
                                   f"the simulator's pty link), found '{ch}'"))
        if self.interface == "socketcan" and ("/" in ch or not ch):
            out.append(src.problem(("connections", index, "channel"),
                                   f"socketcan needs a network interface name such as can0 or "
                                   f"vcan0, found '{ch}'"))
        return out

