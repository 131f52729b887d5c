"""A hostile slcan adapter on a pty, as a protection engineer plugs one in: it speaks the
slcan protocol (the gateway opens it like any USB-CAN adapter) and sends whatever the test
asks for: all-0xFF payloads, out-of-range values, short and long frames, garbage lines,
and floods of unknown ids with the BMS's real frames mixed in.

Every write goes out whole (a pty takes a partial write when nearly full: the rest is
written once the gateway has read some), under one lock, so a flood thread and the event
loop never interleave half lines. Frames written are counted per id, so a test can check
that the gateway received exactly what went out.
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sim_devices.can_ports import SlcanPty, format_frame

Frame = tuple[int, bytes, bool]  # id, payload, extended


class HostileAdapter(SlcanPty):
    """An slcan adapter on a pty at ``link_path`` that sends what it is told to."""

    def __init__(self, link_path: str | Path, write_timeout_s: float = 30.0) -> None:
        super().__init__(link_path)
        self.written: collections.Counter[int] = collections.Counter()  # id -> frames out
        self.write_timeout_s = write_timeout_s
        self._lock = threading.Lock()

    def write_raw(self, data: bytes) -> bool:
        """All of ``data`` to the gateway, waiting while the pty is full (False: the port
        is closed, or the gateway read nothing for ``write_timeout_s``)."""
        with self._lock:
            fd = self._master
            if fd is None:
                return False
            view = memoryview(data)
            deadline = time.monotonic() + self.write_timeout_s
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    select.select([], [fd], [], 0.05)
                    continue
                except OSError:
                    return False
                view = view[n:]
            return True

    def frame(self, arbitration_id: int, data: bytes, extended: bool = False) -> bool:
        """One frame with exactly ``data`` (any length up to 8: short and long frames)."""
        ok = self.write_raw(format_frame(arbitration_id, data, extended))
        if ok:
            self.written[arbitration_id] += 1
        return ok

    def line(self, raw: bytes) -> bool:
        """Raw bytes, e.g. a garbage line (add the CR yourself)."""
        return self.write_raw(raw)

    def flood(self, unknown_ids: Sequence[int], n: int, real: Sequence[Frame],
              real_every: int) -> threading.Thread:
        """Start a thread writing ``n`` frames of ``unknown_ids`` (round robin, 8 bytes
        carrying a sequence number) and the ``real`` frames after every ``real_every`` of
        them, as fast as the gateway reads. Join the thread before ``stop``."""
        lines = [format_frame(i, bytes(8), False) for i in unknown_ids]

        def run() -> None:
            for seq in range(n):
                arb = unknown_ids[seq % len(unknown_ids)]
                payload = seq.to_bytes(8, "little")
                line = lines[seq % len(lines)][:5] + payload.hex().upper().encode() + b"\r"
                if not self.write_raw(line):
                    return
                self.written[arb] += 1
                if (seq + 1) % real_every == 0:
                    for rid, data, ext in real:
                        self.frame(rid, data, ext)

        thread = threading.Thread(target=run, name="hostile slcan flood", daemon=True)
        thread.start()
        return thread
