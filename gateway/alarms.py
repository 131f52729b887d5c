"""Alarms (raised / cleared / acknowledged, with severity, source and time) and the audit log
of every operator command, refusal and mode change, persisted in a small SQLite file so both
survive a restart. A daemon service like the historian: the daemon opens it before the
components start and closes it after they stop; control, analytics and the API reach it
through ``daemon.ports.alarms``. Writes are single rows on rare events; they never sit in
a trip path (protection issues its command first and records afterwards).

The audit log is bounded, because a client controls what it sends: every stored string is
cut to MAX_FIELD_CHARS and a detail to MAX_DETAIL_BYTES (the row says it was truncated);
rows older than ``retention_days`` or beyond ``max_rows`` are deleted at most every
PRUNE_EVERY_S; a query returns at most MAX_PAGE rows, newest first, and the next page is
asked for with ``before`` = the smallest ``id`` seen.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.dbfiles import create_private, describe

log = logging.getLogger("autogrid.control")

SEVERITIES = ("info", "warning", "critical")
MAX_FIELD_CHARS = 256  # any one string in an audit row
MAX_DETAIL_BYTES = 4096  # the JSON of one row's detail
MAX_ITEMS = 32  # list items / mapping keys kept per level of a detail
MAX_PAGE = 500  # audit rows per query
PRUNE_EVERY_S = 60.0

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


class AlarmStore:
    """Alarms and audit in SQLite (WAL); in memory the alarm table is the truth."""

    def __init__(self, path: Path | None, retention_days: float = 90.0,
                 max_rows: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.alarms: dict[str, Alarm] = {}
        self.listeners: list[Callable[[Alarm], None]] = []
        self.on_audit: list[Callable[[dict[str, Any]], None]] = []  # each row (cluster)
        self._audit_mem: list[tuple[int, float, str, str, str, int, str | None]] = []
        self._mem_id = 0
        self._last_prune = float("-inf")
        self.audit_error: str | None = None  # the audit log cannot be written (e.g. disk full)

    def open(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            raise RuntimeError(f"control database {self.path}: cannot open: "
                               f"{describe(exc)}") from None
        for row in self._db.execute("SELECT key, source, severity, message, raised_s, "
                                    "cleared_s, acked_s, acked_by, count FROM alarms"):
            a = Alarm(*row)
            self.alarms[a.key] = a
        self.prune()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _save(self, a: Alarm) -> None:
        """Persist one alarm; a disk problem is logged, never raised (the alarm stays
        active in memory, which is the truth)."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO alarms VALUES (?,?,?,?,?,?,?,?,?)",
                    (a.key, a.source, a.severity, a.message, a.raised_s, a.cleared_s,
                     a.acked_s, a.acked_by, a.count))
                self._db.commit()
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                log.error("alarm %s not saved to %s: %s", a.key, self.path,
                          describe(exc))

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
        """Record one row, bounded (see the module docstring). Never raises for a full or
        broken disk: the command it records has already happened or been refused."""
        now = self.clock() if now is None else now
        row = (now, _cut(str(user)), _cut(str(action)), bounded_detail(detail), int(ok),
               None if reason is None else _cut(str(reason)))
        self._mem_id += 1
        self._audit_mem.append((self._mem_id, *row))
        for fn in list(self.on_audit):
            fn({"ts": now, "user": row[1], "action": row[2], "detail": detail, "ok": ok,
                "reason": row[5]})
        del self._audit_mem[:-1000]
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("INSERT INTO audit (ts, user, action, detail, ok, reason) "
                                 "VALUES (?,?,?,?,?,?)", row)
                self._db.commit()
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                if self.audit_error is None:
                    log.error("audit log %s cannot be written: %s (rows are kept in memory, "
                              "the last 1000 only)", self.path, describe(exc))
                self.audit_error = describe(exc)
                return
            if self.audit_error is not None:
                log.info("audit log %s is written again", self.path)
                self.audit_error = None
        if now - self._last_prune >= PRUNE_EVERY_S:
            self.prune(now)

    def prune(self, now: float | None = None) -> int:
        """Delete audit rows past the retention age or beyond the row cap; returns how many."""
        now = self.clock() if now is None else now
        self._last_prune = now
        with self._lock:
            if self._db is None:
                return 0
            try:
                n = self._db.execute("DELETE FROM audit WHERE ts < ?",
                                     (now - self.retention_days * 86400.0,)).rowcount
                n += self._db.execute(
                    "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?",
                    (self.max_rows,)).rowcount
                self._db.commit()
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                log.warning("audit retention on %s failed: %s", self.path,
                            describe(exc))
                return 0
        if n:
            log.info("audit retention: deleted %d rows (older than %g days or beyond %d rows)",
                     n, self.retention_days, self.max_rows)
        return n

    def audit_log(self, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first, at most MAX_PAGE rows; ``before``: only rows with a smaller id."""
        limit = max(1, min(int(limit), MAX_PAGE))
        cursor = before if before is not None else 2**63 - 1
        with self._lock:
            if self._db is not None:
                rows = list(self._db.execute(
                    "SELECT id, ts, user, action, detail, ok, reason FROM audit "
                    "WHERE id < ? ORDER BY id DESC LIMIT ?", (cursor, limit)))
            else:
                rows = [r for r in reversed(self._audit_mem) if r[0] < cursor][:limit]
        return [{"id": r[0], "ts": r[1], "user": r[2], "action": r[3],
                 "detail": json.loads(r[4]), "ok": bool(r[5]), "reason": r[6]} for r in rows]


def _cut(text: str) -> str:
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return f"{text[:MAX_FIELD_CHARS]}... ({len(text) - MAX_FIELD_CHARS} more characters)"


def bounded_detail(detail: dict[str, Any]) -> str:
    """The detail as JSON of at most MAX_DETAIL_BYTES; ``_truncated`` says what was cut."""
    cuts: list[str] = []

    def walk(obj: Any, level: int) -> Any:
        if isinstance(obj, str):
            if len(obj) > MAX_FIELD_CHARS:
                cuts.append("long strings")
            return _cut(obj)
        if isinstance(obj, bool | int | float) or obj is None:
            return obj
        if level >= 4:
            cuts.append("deep nesting")
            return _cut(json.dumps(obj, default=str))
        if isinstance(obj, dict):
            if len(obj) > MAX_ITEMS:
                cuts.append(f"{len(obj) - MAX_ITEMS} keys")
            return {_cut(str(k)): walk(v, level + 1) for k, v in list(obj.items())[:MAX_ITEMS]}
        if isinstance(obj, list | tuple):
            if len(obj) > MAX_ITEMS:
                cuts.append(f"{len(obj) - MAX_ITEMS} list items")
            return [walk(v, level + 1) for v in obj[:MAX_ITEMS]]
        return _cut(str(obj))

    try:
        kept = walk(detail, 0)
        if cuts:
            kept["_truncated"] = ", ".join(dict.fromkeys(cuts))
        text = json.dumps(kept, default=str, sort_keys=True)
    except (ValueError, TypeError, RecursionError) as exc:
        return json.dumps({"_truncated": f"detail not stored ({type(exc).__name__})"})
    if len(text.encode()) <= MAX_DETAIL_BYTES:
        return text
    keys = [_cut(str(k))[:40] for k in list(detail)[:MAX_ITEMS]]
    return json.dumps({"_truncated": f"detail of {len(text.encode())} bytes not stored "
                                     f"(limit {MAX_DETAIL_BYTES})", "keys": keys})


ControlStore = AlarmStore  # its name when site control owned it


def alarms_path(control_state_path: str | None, historian_path: Path | None) -> Path | None:
    """Where alarms and audit persist: ``control.state_path``, else next to the historian's
    database, else nowhere (kept in memory)."""
    if control_state_path:
        return Path(control_state_path)
    return historian_path.with_suffix(".control.sqlite") if historian_path else None
