"""One daemon per gateway: an exclusive flock on ``<state dir>/<gateway>.lock``.

The lock is taken before the daemon touches anything else (socket, databases, devices), so a
second ``autogrid run`` on the same config stops at once and cannot disturb the running one.
The state directory is the directory of the historian database, else of the control
database, else of the API socket (see ``lock_path``). The kernel drops the lock when the
process dies, so a crash never leaves a stale lock; the file is never unlinked (unlinking a
lock file lets two processes lock two different inodes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another process holds the gateway's lock; the message names its pid and the lock."""


class LockError(RuntimeError):
    """The lock file cannot be created (the message names the path and why)."""


def lock_path(gateway_id: str, historian_db: Path | None, control_db: Path | None,
              socket_path: Path) -> Path:
    """``<state dir>/<gateway>.lock``: next to the historian database, else next to the
    control database, else next to the API socket (a daemon without any state)."""
    anchor = historian_db or control_db or socket_path
    return anchor.parent / f"{gateway_id}.lock"


class RunLock:
    """An exclusive, non-blocking flock held for the life of the daemon."""

    def __init__(self, path: Path, gateway_id: str) -> None:
        self.path = path
        self.gateway_id = gateway_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our pid into the file; raise AlreadyRunning or LockError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise LockError(f"cannot create the lock file {self.path}: "
                            f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "pid unknown"
            raise AlreadyRunning(f"gateway {self.gateway_id} is already running ({who}, "
                                 f"lock {self.path})") from None
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: see the module docstring)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    return None
