"""Small helpers shared by the SQLite stores (historian, alarms/audit)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def create_private(path: Path) -> None:
    """Create the database file 0640 (SQLite makes its -wal/-shm files alike): history and
    audit rows are not for every local user. An existing file loses world access."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o007:
            os.fchmod(fd, mode & ~0o007)
    finally:
        os.close(fd)


def describe(exc: sqlite3.Error | OSError) -> str:
    """An error in an operator's words: "disk full" rather than SQLite's error code 13."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return "disk full"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
