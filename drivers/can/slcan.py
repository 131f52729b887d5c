"""Reading an slcan adapter in bulk, dropping frames nobody listens to before decoding.

python-can's slcan bus reads its serial port one byte per call and builds a Message for
every frame, then applies ``can_filters`` in software; ~5k frames/s of ids the gateway
does not use took a whole core that way, the pty backed up and real BMS frames were
lost. Here the port is read in chunks (everything buffered per wake-up), split into
lines, and a frame's id prefix (``t351``, ``T18FF50E5``) is looked up before anything is
parsed: a frame of an unknown id is only counted, per id. The python-can bus still opens
the adapter (bitrate, ``O``) and sends; only reading bypasses it.
"""

from __future__ import annotations

import binascii
import os
import select
from collections.abc import Callable, Iterable
from typing import Any

MAX_LINE = 64  # longer than any classic slcan frame line (T + 8 + 1 + 16 + timestamp)
_IGNORED = frozenset(b"zZrRVvNF")  # send acks, remote frames, version/serial/status replies


def frame_prefixes(keys: Iterable[int], extended_bit: int) -> dict[bytes, int]:
    """Line prefix -> frame key for every key (upper- and lowercase hex, as adapters vary)."""
    out: dict[bytes, int] = {}
    for key in keys:
        if key & extended_bit:
            ident = f"{key & ~extended_bit & 0x1FFFFFFF:08X}"
            head = "T"
        else:
            ident, head = f"{key:03X}", "t"
        for spelling in (ident, ident.lower()):
            out[(head + spelling).encode()] = key
    return out


def prefix_id(prefix: bytes) -> int | None:
    """The CAN id of a ``t``/``T`` line prefix, None if it is not one."""
    n = 4 if prefix[:1] == b"t" else 9 if prefix[:1] == b"T" else 0
    if not n or len(prefix) != n:
        return None
    try:
        ident = int(prefix[1:], 16)
    except ValueError:
        return None
    return ident if ident <= (0x7FF if n == 4 else 0x1FFFFFFF) else None


class SlcanParser:
    """Splits an slcan byte stream into the frames of accepted ids; counts the rest.

    Only the reader thread calls ``feed``; the counters are read from the event loop
    (plain int/dict reads are safe under the GIL; ``dropped`` is copied to be read)."""

    def __init__(self) -> None:
        self.frames = 0  # data frames seen, accepted or not
        self.malformed = 0  # lines that are no slcan frame, or a frame that lies about its DLC
        self.dropped: dict[bytes, int] = {}  # id prefix -> frames nobody listens to
        self._rest = b""

    def restart(self) -> None:
        """A new connection: forget a partial line of the old one (counters stay)."""
        self._rest = b""

    def feed(self, chunk: bytes, accept: dict[bytes, int]) -> list[tuple[int, bytes]]:
        """(key, payload) of every complete frame in ``chunk`` whose id is accepted."""
        # slcan ends a frame with CR; an adapter refusing a command answers BEL
        lines = (self._rest + chunk).replace(b"\a", b"\r").split(b"\r")
        self._rest = lines.pop()
        if len(self._rest) > MAX_LINE:  # no terminator in sight: garbage
            self._rest = b""
            self.malformed += 1
        out: list[tuple[int, bytes]] = []
        dropped = self.dropped
        for line in lines:
            if not line:
                continue  # an "OK" reply
            head = line[0]
            if head == 116:  # "t": 11-bit id
                n = 4
            elif head == 84:  # "T": 29-bit id
                n = 9
            else:
                if head not in _IGNORED:
                    self.malformed += 1
                continue
            prefix = line[:n]
            key = accept.get(prefix)
            if key is None:  # nobody listens: count it, never parse the payload
                count = dropped.get(prefix)
                if count is not None:
                    dropped[prefix] = count + 1
                    self.frames += 1
                elif prefix_id(prefix) is not None:
                    dropped[prefix] = 1
                    self.frames += 1
                else:
                    self.malformed += 1
                continue
            payload = self._payload(line, n)
            if payload is None:
                self.malformed += 1
                continue
            self.frames += 1
            out.append((key, payload))
        return out

    @staticmethod
    def _payload(line: bytes, n: int) -> bytes | None:
        """The data bytes of a frame line, None when its length disagrees with its DLC
        (4 hex digits more are an adapter's timestamp)."""
        dlc = line[n] - 48 if len(line) > n else -1
        if not 0 <= dlc <= 8:
            return None
        hexpart = line[n + 1:]
        if len(hexpart) != 2 * dlc and len(hexpart) != 2 * dlc + 4:
            return None
        try:
            return binascii.unhexlify(hexpart[:2 * dlc])
        except (binascii.Error, ValueError):
            return None

    def dropped_by_id(self, extended_bit: int) -> dict[int, int]:
        """Frames dropped per frame key (29-bit ids carry ``extended_bit``)."""
        out: dict[int, int] = {}
        for prefix, count in dict(self.dropped).items():
            ident = prefix_id(prefix)
            if ident is not None:
                key = ident | extended_bit if prefix[:1] == b"T" else ident
                out[key] = out.get(key, 0) + count
        return out


def chunk_reader(serial_port: Any) -> Callable[[float], bytes]:
    """A function ``timeout -> bytes`` reading everything the port has buffered (b"" after
    ``timeout`` without data); OSError when the port is gone."""
    fd = getattr(serial_port, "fd", None)
    if isinstance(fd, int):
        def read_fd(timeout: float) -> bytes:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            data = os.read(fd, 65536)
            if not data:
                raise OSError("the adapter closed the port")
            return data
        return read_fd

    def read_port(timeout: float) -> bytes:  # URL handlers (socket://, rfc2217://)
        data = serial_port.read(max(1, serial_port.in_waiting))
        return bytes(data)
    return read_port
