"""The simulated devices' write journal: the device side's own record of every write
request that reached a device model, so a test can check who wrote what, and when,
without trusting the gateways under test.

Each row: wall time (``time.time()`` when the request reached the model), device id,
unit id, register block and address, the values and the points they carry (decoded as
the model saw them, before it clamps), the peer address (ip, port) of the TCP
connection it came on, and whether the model took it. Bounded: the last ``per_device``
rows of each device. Off (no journal object at all) unless asked for, so a normal run
pays nothing.

The peer is known per request because ``JournalingTcpServer`` hands each connection a
request handler that puts its peer address in a context variable for the duration of
the request's task (pymodbus runs each request as its own task, and the device model's
hook is awaited inside it).
"""

from __future__ import annotations

import contextvars
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

Peer = tuple[str, int]

# The peer of the connection whose request is being handled in this task (None: unknown).
PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("sim_modbus_peer",
                                                                  default=None)


@dataclass(frozen=True)
class WriteRecord:
    at: float  # wall time (time.time) the request reached the device model
    device: str
    unit: int
    block: str  # register block: "h" (holding registers) or "c" (coils)
    address: int
    values: list[int]  # the registers (or coils) as sent
    points: dict[str, Any]  # the points those carry, decoded as the device model saw them
    peer: Peer | None
    ok: bool  # the model took it (False: it answered with a Modbus exception)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peer"] = list(self.peer) if self.peer is not None else None
        return out


class WriteJournal:
    """The last ``per_device`` write requests of each device."""

    def __init__(self, per_device: int = 1000) -> None:
        if not 1 <= per_device <= 1_000_000:
            raise ValueError(f"per_device must be 1..1000000, found {per_device}")
        self.per_device = per_device
        self._rows: dict[str, deque[WriteRecord]] = {}
        self.dropped = 0  # rows pushed out by the bound

    def record(self, device: str, unit: int, block: str, address: int,
               values: list[int] | list[bool], points: dict[str, Any], ok: bool) -> None:
        rows = self._rows.get(device)
        if rows is None:
            rows = self._rows[device] = deque(maxlen=self.per_device)
        if len(rows) == self.per_device:
            self.dropped += 1
        rows.append(WriteRecord(time.time(), device, unit, block, address,
                                [int(v) for v in values], points, PEER.get(), ok))

    def rows(self, device: str | None = None) -> list[WriteRecord]:
        """Rows of one device, or of all in time order."""
        if device is not None:
            return list(self._rows.get(device, ()))
        return sorted((r for rows in self._rows.values() for r in rows), key=lambda r: r.at)

    def dump(self, path: str | Path) -> int:
        """Write every row as JSON lines to ``path`` (replaced); returns how many."""
        rows = self.rows()
        Path(path).write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))
        return len(rows)


def load(path: str | Path) -> list[WriteRecord]:
    """Rows written by ``WriteJournal.dump``."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            peer = d.get("peer")
            out.append(WriteRecord(float(d["at"]), str(d["device"]), int(d["unit"]),
                                   str(d["block"]), int(d["address"]),
                                   [int(v) for v in d["values"]], dict(d["points"]),
                                   (str(peer[0]), int(peer[1])) if peer else None,
                                   bool(d["ok"])))
    return out


class _PeerHandler(ServerRequestHandler):
    """A connection's handler that names its peer to the requests it runs."""

    async def handle_request(self) -> None:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        token = PEER.set((str(peer[0]), int(peer[1])) if peer else None)
        try:
            await super().handle_request()
        finally:
            PEER.reset(token)


class JournalingTcpServer(ModbusTcpServer):
    """ModbusTcpServer whose connections name their peer to the device hooks."""

    def callback_new_connection(self) -> ServerRequestHandler:
        return _PeerHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)
