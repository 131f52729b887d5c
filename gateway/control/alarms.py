"""Alarms (raised / cleared / acknowledged, with severity, source and time) and the audit log
of every operator command and mode change, persisted in a small SQLite file so both
survive a restart. Writes are single rows on rare events; they never sit in a trip path
(protection issues its command first and records afterwards).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SEVERITIES = ("info", "warning", "critical")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    key TEXT PRIMARY KEY, source TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL,
    raised_s REAL NOT NULL, cleared_s REAL, acked_s REAL, acked_by TEXT, count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT NOT NULL, ok INTEGER NOT NULL, reason TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
"""


@dataclass
class Alarm:
    key: str  # source + condition, e.g. "battery:cell_temp_max_c>"
    source: str  # device id or subsystem
    severity: str
    message: str
    raised_s: float
    cleared_s: float | None = None
    acked_s: float | None = None
    acked_by: str | None = None
    count: int = 1

    @property
    def active(self) -> bool:
        return self.cleared_s is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


class ControlStore:
    """Alarms and audit in SQLite (WAL); in memory the alarm table is the truth."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.alarms: dict[str, Alarm] = {}
        self.listeners: list[Callable[[Alarm], None]] = []
        self._audit_mem: list[tuple[float, str, str, str, int, str | None]] = []

    def open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for row in self._db.execute("SELECT key, source, severity, message, raised_s, "
                                    "cleared_s, acked_s, acked_by, count FROM alarms"):
            a = Alarm(*row)
            self.alarms[a.key] = a

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _save(self, a: Alarm) -> None:
        with self._lock:
            if self._db is None:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO alarms VALUES (?,?,?,?,?,?,?,?,?)",
                (a.key, a.source, a.severity, a.message, a.raised_s, a.cleared_s, a.acked_s,
                 a.acked_by, a.count))
            self._db.commit()

    # -- alarms --------------------------------------------------------------------------
    def raise_(self, source: str, condition: str, severity: str, message: str,
               now: float | None = None) -> Alarm:
        """Raise (or re-raise) an alarm; an active one just keeps its time and counts."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        key = f"{source}:{condition}"
        now = time.time() if now is None else now
        a = self.alarms.get(key)
        if a is not None and a.active:
            if a.message == message and a.severity == severity:
                return a
            a.message, a.severity = message, severity
        elif a is not None:  # came back: a new occurrence, needs a new acknowledgement
            a.raised_s, a.cleared_s, a.acked_s, a.acked_by = now, None, None, None
            a.message, a.severity = message, severity
            a.count += 1
        else:
            a = Alarm(key, source, severity, message, now)
            self.alarms[key] = a
        self._save(a)
        for fn in list(self.listeners):
            fn(a)
        return a

    def clear(self, source: str, condition: str, now: float | None = None) -> bool:
        a = self.alarms.get(f"{source}:{condition}")
        if a is None or not a.active:
            return False
        a.cleared_s = time.time() if now is None else now
        self._save(a)
        for fn in list(self.listeners):
            fn(a)
        return True

    def is_active(self, source: str, condition: str) -> bool:
        a = self.alarms.get(f"{source}:{condition}")
        return a is not None and a.active

    def ack(self, key: str, user: str, now: float | None = None) -> Alarm:
        a = self.alarms.get(key)
        if a is None:
            raise KeyError(key)
        a.acked_s = time.time() if now is None else now
        a.acked_by = user
        self._save(a)
        for fn in list(self.listeners):  # e.g. an alarm that acknowledging ends
            fn(a)
        return a

    def listing(self, active_only: bool = False) -> list[dict[str, Any]]:
        out = [a for a in self.alarms.values() if a.active or not active_only]
        out.sort(key=lambda a: (not a.active, SEVERITIES.index(a.severity) * -1, -a.raised_s))
        return [a.as_dict() for a in out]

    # -- audit ---------------------------------------------------------------------------
    def audit(self, user: str, action: str, detail: dict[str, Any], ok: bool = True,
              reason: str | None = None, now: float | None = None) -> None:
        row = (time.time() if now is None else now, user, action,
               json.dumps(detail, default=str, sort_keys=True), int(ok), reason)
        self._audit_mem.append(row)
        del self._audit_mem[:-1000]
        with self._lock:
            if self._db is not None:
                self._db.execute("INSERT INTO audit (ts, user, action, detail, ok, reason) "
                                 "VALUES (?,?,?,?,?,?)", row)
                self._db.commit()

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            if self._db is not None:
                rows = list(self._db.execute(
                    "SELECT ts, user, action, detail, ok, reason FROM audit "
                    "ORDER BY id DESC LIMIT ?", (limit,)))
            else:
                rows = list(reversed(self._audit_mem[-limit:]))
        return [{"ts": r[0], "user": r[1], "action": r[2], "detail": json.loads(r[3]),
                 "ok": bool(r[4]), "reason": r[5]} for r in rows]
