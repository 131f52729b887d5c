"""The CAN connection (site config ``connections[]`` with ``type: can``) and its checks.

One connection is one CAN bus as the gateway sees it: a python-can interface and channel.
``socketcan`` is production (can0, vcan0), ``slcan`` a USB-serial adapter or the
simulator's pseudo-terminal, ``udp_multicast`` and ``virtual`` are for simulation and
tests (udp_multicast only when loopback carries the group; see drivers.can.link).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.yamlsrc import Problem, Source

if TYPE_CHECKING:
    from gateway.config.models import SiteConfig

PositiveS = Annotated[float, Field(gt=0, le=3600)]

CAN_INTERFACES = ("socketcan", "slcan", "udp_multicast", "virtual")
BITRATES = (10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000, 1_000_000)


class CanConnection(BaseModel):
    """A CAN bus. Devices on it are told apart by their templates' frame ids."""

    model_config = ConfigDict(extra="forbid")  # (models.py imports this module)

    type: Literal["can"]
    id: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
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


def check_can_connection(conn: CanConnection, index: int, src: Source) -> list[Problem]:
    """Cross-field checks of one CAN connection, positioned."""
    out: list[Problem] = []
    ch = conn.channel
    if conn.interface == "slcan" and not (ch.startswith("/") or ch.upper().startswith("COM")
                                          or "://" in ch):
        out.append(src.problem(("connections", index, "channel"),
                               f"slcan needs a serial device path (e.g. /dev/ttyACM0 or "
                               f"the simulator's pty link), found '{ch}'"))
    if conn.interface == "socketcan" and ("/" in ch or not ch):
        out.append(src.problem(("connections", index, "channel"),
                               f"socketcan needs a network interface name such as can0 or "
                               f"vcan0, found '{ch}'"))
    if conn.reconnect_delay_max_s < conn.reconnect_delay_s:
        out.append(src.problem(("connections", index, "reconnect_delay_max_s"),
                               f"must be at least reconnect_delay_s "
                               f"({conn.reconnect_delay_s:g} s), found "
                               f"{conn.reconnect_delay_max_s:g} s"))
    return out


def check_can_frames(cfg: SiteConfig, src: Source, templates: dict[str, Any]) -> list[Problem]:
    """Two devices on one CAN bus must not claim the same frame id (same model with
    ``id_stride: 0``, or unit ids that shift one onto the other)."""
    from drivers.can.template import CanTemplate  # drivers import config, not vice versa

    out: list[Problem] = []
    conns = {c.id: c for c in cfg.connections}
    owners: dict[tuple[str, int, bool], tuple[str, str]] = {}
    for i, dev in enumerate(cfg.devices):
        conn = conns.get(dev.connection)
        tpl = templates.get(dev.template)
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
