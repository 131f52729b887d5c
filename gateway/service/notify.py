"""sd_notify(3) client: READY, STATUS, WATCHDOG, RELOADING, STOPPING datagrams to systemd.

Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op, so the daemon
runs the same in a terminal. A failed send is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("autogrid.service")


class Notifier:
    """Sends ``KEY=value`` lines to the service manager's notification socket."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent = 0
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        text = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto(text.encode(), addr)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._warned = True
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload to it.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's WatchdogSec (from ``WATCHDOG_USEC``), or None without a watchdog.

    ``WATCHDOG_PID``, when set, must be this process (a child must not ping for us).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return value / 2e6 if value > 0 else None
