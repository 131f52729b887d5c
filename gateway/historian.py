"""Historian: every reading that changed, in SQLite (WAL), written in batches.

Readings are buffered in memory by the SiteState listener (cheap, on the event loop) and
written by a flush task in a worker thread, one transaction per flush, so a slow disk never
stalls polling. With ``deadband_pct`` a number is stored only when it moved by more than
that share of its last stored value (quality changes and text are always stored). Old rows
are deleted after ``retention_days``.

Storage: ``history`` is keyed (point_id, ts_ms) WITHOUT ROWID, integer milliseconds, one
B-tree and no other index: a row costs about a third of the old rowid table with two
indexes. ``samples`` is a view with the old shape (ts in seconds) for readers written
against it; a database in the old format is converted when it is opened.

A full disk (SQLITE_FULL) or a broken file never stops polling: the first failure is
logged with the path, the rows stay buffered (at most BUFFER_BATCHES batches; the oldest
are dropped and counted beyond that) and are retried; ``stats()`` says ``disk_full`` and
how many rows were lost, and a stop that cannot write the buffer says how many it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from itertools import chain
from pathlib import Path

from gateway.aio import cancel_and_wait
from gateway.config.models import Historian as HistorianConfig
from gateway.dbfiles import create_private, describe
from gateway.model import Quality, Reading

log = logging.getLogger("autogrid.historian")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    UNIQUE (device, point)
);
CREATE TABLE IF NOT EXISTS history (
    point_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL,
    text TEXT,
    quality INTEGER NOT NULL,
    PRIMARY KEY (point_id, ts_ms)
) WITHOUT ROWID;
"""
_VIEW = """
CREATE VIEW IF NOT EXISTS samples AS
    SELECT point_id, ts_ms / 1000.0 AS ts, value, text, quality FROM history;
"""
# A database written before the history table: its rows move over once, on open.
_MIGRATE = """
INSERT OR REPLACE INTO history
    SELECT point_id, CAST(round(ts * 1000) AS INTEGER), value, text, quality FROM samples;
DROP INDEX IF EXISTS samples_ts;
DROP INDEX IF EXISTS samples_point_ts;
DROP TABLE samples;
"""

QUALITY_CODE = {Quality.GOOD: 0, Quality.STALE: 1, Quality.OFFLINE: 2, Quality.INVALID: 3}
QUALITY_NAME = {v: str(k) for k, v in QUALITY_CODE.items()}

BUFFER_BATCHES = 50  # rows kept in memory while the disk refuses them, in batches
# Rows are keyed by point, so a batch dirties about one page per point it holds, and every
# commit appends each of those pages to the WAL. SQLite's default checkpoint (every 1000
# pages) then copies the same pages into the database after nearly every batch; at 10000
# pages (a WAL of up to ~40 MB) a page changed by several batches is copied once: kernel
# CPU per row -25 % in bench/historian.py (2000 points, batches of 1000).
WAL_CHECKPOINT_PAGES = 10_000

# A buffered row, built once by record() in the shape the INSERT takes: point id, ts_ms,
# value, text, quality code. A point the writer has not given an id yet carries
# (device, point, unit) in place of its id until the batch is written.
#
# No parameter is ever None: Python's sqlite3 binds int, float and str directly but
# sends None through its adapter lookup (a failed attribute lookup that formats and
# drops an exception, ~3,300 instructions a row). A missing number is NaN, which SQLite
# binds as NULL; a row without text carries "" and the quality code says whether the
# text is real (TEXT bit), so one statement keeps the batch in order.
#
# Rows go in ROWS_PER_INSERT to a statement (a multi-row VALUES, inserted in order): each
# statement execution costs a GIL release, SQLite's mutex, a reset and a halt, and these
# were paid per row.
PointKey = tuple[str, str, str]
Row = tuple["int | PointKey", int, float, str, int]
_TEXT = 4  # added to the quality code (0..3) of a row whose text is stored
_NAN = float("nan")
ROWS_PER_INSERT = 50


def _insert_sql(rows: int) -> str:
    one = "(?{0}, ?{1}, ?{2}, CASE WHEN ?{4} & 4 THEN ?{3} END, ?{4} & 3)"
    return "INSERT OR REPLACE INTO history VALUES " + ", ".join(
        one.format(*range(5 * j + 1, 5 * j + 6)) for j in range(rows))


_INSERT_ONE = _insert_sql(1)
_INSERT_MANY = _insert_sql(ROWS_PER_INSERT)


class Historian:
    def __init__(self, cfg: HistorianConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._buffer: list[Row] = []
        self._unresolved = 0  # buffered rows that carry a PointKey, not an id yet
        # device -> point -> id; filled by the writer after its commit, read by record()
        self._ids: dict[str, dict[str, int]] = {}
        self._deadband = cfg.deadband_pct / 100.0
        # device -> point -> (value, quality) last kept: the deadband's reference
        self._last: dict[str, dict[str, tuple[object, Quality]]] = {}
        self._batch_size = cfg.batch_size
        self._limit = BUFFER_BATCHES * cfg.batch_size
        self.suppressed = 0  # readings inside the deadband, not stored
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.rows_written = 0
        self.dropped = 0  # rows lost: dropped from a full buffer, or unwritten at stop
        self.last_error: str | None = None
        self.disk_full = False
        self._dropping = False  # the current failure episode has dropped rows (logged)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._flush_loop(), name="historian flush")

    async def stop(self) -> int:
        """Flush everything still buffered, then close; returns the rows that could not be
        written (and are lost), after saying so in the log."""
        if self._task:
            await cancel_and_wait([self._task])
            self._task = None
        await self.flush()
        lost = len(self._buffer)
        if lost:
            self.dropped += lost
            self._buffer = []
            log.error("historian stopped with %d rows not written to %s (%s); %d rows lost "
                      "in all", lost, self.path, self.last_error, self.dropped)
        await asyncio.to_thread(self._close)
        return lost

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
                old = db.execute("SELECT type FROM sqlite_master WHERE name='samples'"
                                 ).fetchone()
                db.executescript(_SCHEMA)
                if old is not None and old[0] == "table":
                    n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
                    log.info("historian %s: converting %d rows to the compact format",
                             self.path, n)
                    db.executescript("BEGIN;" + _MIGRATE + "COMMIT;")
                db.executescript(_VIEW)
                for pid, device, point in db.execute("SELECT id, device, point FROM points"):
                    self._ids.setdefault(device, {})[point] = pid
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise RuntimeError(f"historian database {self.path}: cannot open: "
                               f"{describe(exc)}") from None
        self._db = db

    def _close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- input (event loop) ------------------------------------------------------------

    def record(self, device_id: str, changed: dict[str, Reading]) -> None:
        """SiteState listener: buffer the changed readings as ready-made rows (no I/O);
        with a deadband, skip numbers that moved less than it since the value last kept.

        This runs on the event loop for every reading, so it does the least it can: one
        tuple per row, the millisecond time computed once per read (a device's readings
        of one read share their time), no per-row key objects; a number of a known point
        takes the short path.
        """
        if self._deadband:
            changed = self._outside_deadband(device_id, changed)
        ids = self._ids.get(device_id)
        if ids is None:
            ids = self._ids.setdefault(device_id, {})
        buf = self._buffer
        ts, ms = 0.0, 0
        for point, r in changed.items():
            if r.ts is not ts:
                ts = r.ts
                ms = round(ts * 1000.0)
            v = r.value
            pid = ids.get(point)
            if pid is not None and v.__class__ is float:
                buf.append((pid, ms, v, "", QUALITY_CODE[r.quality]))
            else:
                buf.append(self._row(device_id, point, r, pid, ms))
        if len(buf) >= self._batch_size:
            self._wake.set()
            if len(buf) > self._limit:
                self._bound_buffer()

    def _row(self, device_id: str, point: str, r: Reading, pid: int | None, ms: int) -> Row:
        """The row of any reading: text, a non-float number, no value, a new point."""
        v = r.value
        code = QUALITY_CODE[r.quality]
        if isinstance(v, str):
            num, text, code = _NAN, v, code | _TEXT
        elif isinstance(v, int | float):  # bool is an int
            num, text = float(v), ""
        else:
            num, text = _NAN, ""
        if pid is None:
            self._unresolved += 1
            return ((device_id, point, r.unit), ms, num, text, code)
        return (pid, ms, num, text, code)

    def _outside_deadband(self, device_id: str, changed: dict[str, Reading]
                          ) -> dict[str, Reading]:
        """The readings to keep: all but numbers within the deadband of the number last
        kept for their point with the same quality."""
        band = self._deadband
        last = self._last.get(device_id)
        if last is None:
            last = self._last.setdefault(device_id, {})
        keep: dict[str, Reading] = {}
        for point, r in changed.items():
            v, q = r.value, r.quality
            prev = last.get(point)
            if (prev is not None and prev[1] is q
                    and isinstance(v, int | float) and isinstance(prev[0], int | float)
                    and abs(v - prev[0]) <= band * abs(prev[0])):
                self.suppressed += 1
                continue
            last[point] = (v, q)
            keep[point] = r
        return keep

    def _bound_buffer(self) -> None:
        """Keep at most BUFFER_BATCHES batches in memory; drop the oldest and count them."""
        buf, limit = self._buffer, self._limit
        if len(buf) > limit:
            drop = len(buf) - limit
            if not self._dropping:  # once per episode
                log.error("historian buffer full (%d rows) while %s cannot be written: "
                          "dropping the oldest rows (%d lost so far)", limit, self.path,
                          self.dropped + drop)
            self._dropping = True
            del buf[:drop]
            self.dropped += drop

    # -- output (worker thread) --------------------------------------------------------

    async def _flush_loop(self) -> None:
        last_retention = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.flush_interval_s)
            self._wake.clear()
            await self.flush()
            if time.time() - last_retention > 3600:
                last_retention = time.time()
                await asyncio.to_thread(self._apply_retention)

    async def flush(self) -> int:
        if not self._buffer or self._db is None:
            return 0
        batch, self._buffer = self._buffer, []
        unresolved, self._unresolved = self._unresolved, 0
        try:
            n = await asyncio.to_thread(self._write, batch, unresolved)
        except sqlite3.Error as exc:
            why = describe(exc)
            self._buffer[:0] = batch
            self._unresolved += unresolved
            self._bound_buffer()
            if self.last_error != why:
                log.error("historian: %s writing %s (%d rows kept in memory and retried; "
                          "polling goes on)", why, self.path, len(self._buffer))
            self.last_error = why
            self.disk_full = why == "disk full"
            return 0
        if self.last_error is not None:
            log.info("historian writes to %s recovered (%d rows lost meanwhile)", self.path,
                     self.dropped)
            self.last_error = None
            self.disk_full = False
            self._dropping = False
        return n

    def _write(self, batch: list[Row], unresolved: int = 0) -> int:
        """Write ``batch`` in one transaction; ``unresolved``: rows in it that carry a
        PointKey instead of an id (new points), given ids here first."""
        with self._db_lock:
            db = self._db
            if db is None:
                return 0
            new: dict[PointKey, int] = {}
            db.execute("BEGIN")
            try:
                if unresolved:
                    batch = self._resolve(db, batch, new)
                # two readings of one point in the same millisecond: the later one wins
                whole = len(batch) - len(batch) % ROWS_PER_INSERT
                if whole:
                    flat = chain.from_iterable(batch[:whole])  # whole rows per statement
                    db.executemany(_INSERT_MANY,
                                   zip(*[flat] * (5 * ROWS_PER_INSERT), strict=False))
                if whole < len(batch):
                    db.executemany(_INSERT_ONE, batch[whole:])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLITE_FULL has already rolled it back
                    db.execute("ROLLBACK")
                raise
            # only ids that were committed: a rolled-back id may be given to another point
            for (device, point, _), pid in new.items():
                self._ids.setdefault(device, {})[point] = pid
            self.rows_written += len(batch)
            return len(batch)

    def _resolve(self, db: sqlite3.Connection, batch: list[Row],
                 new: dict[PointKey, int]) -> list[Row]:
        """``batch`` with every PointKey replaced by its point's id (new points inserted
        into ``points``; their ids collected in ``new``)."""
        out: list[Row] = []
        for row in batch:
            key = row[0]
            if key.__class__ is tuple:
                device, point, unit = key
                pid = self._ids.get(device, {}).get(point)
                if pid is None:
                    pid = new.get(key)
                    if pid is None:
                        pid = new[key] = self._point_id(db, device, point, unit)
                row = (pid, *row[1:])
            out.append(row)
        return out

    @staticmethod
    def _point_id(db: sqlite3.Connection, device: str, point: str, unit: str) -> int:
        db.execute("INSERT OR IGNORE INTO points (device, point, unit) VALUES (?,?,?)",
                   (device, point, unit))
        row = db.execute("SELECT id FROM points WHERE device=? AND point=?",
                         (device, point)).fetchone()
        return int(row[0])

    def _apply_retention(self) -> None:
        cutoff_ms = round((time.time() - self.cfg.retention_days * 86400.0) * 1000.0)
        with self._db_lock:
            db = self._db
            if db is None:
                return
            n = 0
            try:  # per point: a range of the primary key each, never a full scan
                db.execute("BEGIN")
                try:
                    for (pid,) in db.execute("SELECT id FROM points").fetchall():
                        n += db.execute("DELETE FROM history WHERE point_id = ? AND ts_ms < ?",
                                        (pid, cutoff_ms)).rowcount
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                log.warning("historian retention on %s failed: %s", self.path, describe(exc))
                return
            if n:
                log.info("historian retention: deleted %d samples older than %.0f days",
                         n, self.cfg.retention_days)

    def stats(self) -> dict[str, object]:
        size = self.path.stat().st_size if self.path.exists() else 0
        return {"path": str(self.path), "rows_written": self.rows_written,
                "buffered": len(self._buffer), "dropped": self.dropped,
                "suppressed": self.suppressed, "size_bytes": size,
                "last_error": self.last_error, "disk_full": self.disk_full}
