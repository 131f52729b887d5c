"""Historian: every reading that changed, in SQLite (WAL), written in batches.

Readings are buffered in memory by the SiteState listener (cheap, on the event loop) and
written by a flush task in a worker thread, one transaction per flush, so a slow disk never
stalls polling. With ``deadband_pct`` a number is stored only when it moved by more than
that share of its last stored value (quality changes and text are always stored). Old rows
are deleted after ``retention_days``.

Storage: ``history`` is keyed (point_id, ts_ms) WITHOUT ROWID, integer milliseconds, one
B-tree and no other index: a row costs about a third of the old rowid table with two
indexes. A flush does not write there: keyed by point, a batch over N points dirties about
N pages and every commit appends each to the WAL (~4 KiB of writes per row at 2000
points). It appends to ``history_stage`` instead (rowid = arrival order, no index, a few
sequential pages per flush), and the writer merges the staged rows into ``history`` in key
order every ``merge_interval_s`` or ``merge_rows``, so each point's page is written once
per merge. Readers see both: ``samples`` (a view with the old shape, ts in seconds) and
the daemon's readers (gateway/export.py, gateway/analytics/history_sql.py,
gateway/apihistory.py) read ``history`` UNION ALL ``history_stage``. That needs no
de-duplication because the writer keeps every staged key unique and absent from
``history``: a row is staged only when it is later than every row stored for its point; an
earlier or equal one (a clock stepped back, two readings in one millisecond) is written
to ``history`` after the stage is merged, in the same transaction, replacing the row it
repeats. So a point's staged rows all come after its merged ones. A database in the old
format is converted when it is opened; one in the compact format before staging gains
the stage table.

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
from collections.abc import Callable
from itertools import chain
from pathlib import Path

from gateway.aio import cancel_and_wait
from gateway.config.models import Historian as HistorianConfig
from gateway.dbfiles import create_private, describe
from gateway.historian_stage import (
    MIGRATE,
    SCHEMA,
    STAGE,
    TABLE,
    VIEW,
    insert_sql,
    latest_ts,
    merge,
    staged_rows,
)
from gateway.model import Quality, Reading

log = logging.getLogger("autogrid.historian")

QUALITY_CODE = {Quality.GOOD: 0, Quality.STALE: 1, Quality.OFFLINE: 2, Quality.INVALID: 3}
QUALITY_NAME = {v: str(k) for k, v in QUALITY_CODE.items()}

BUFFER_BATCHES = 50  # rows kept in memory while the disk refuses them, in batches
# A merge dirties about one page per point and a flush a few pages of the stage; SQLite's
# default checkpoint (every 1000 pages) would copy a merge's pages into the database in
# several pieces; at 10000 pages (a WAL of up to ~40 MB) a page is copied once.
WAL_CHECKPOINT_PAGES = 10_000
MERGE_RETRY_S = 10.0  # a merge that failed (disk full) is tried again after this

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


_SCHEMA, _VIEW = SCHEMA, VIEW  # the tables, for tests that build a file by hand
_STAGE_ONE = insert_sql(STAGE, 1)
_STAGE_MANY = insert_sql(STAGE, ROWS_PER_INSERT)
_INSERT_ONE = insert_sql(TABLE, 1)
_NO_TS = -(1 << 62)


class Historian:
    def __init__(self, cfg: HistorianConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock  # for the merge interval
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
        # One flush at a time: a flush() called while the flush task writes a batch waits
        # for it, so "flushed" means those rows are readable (and batches stay in order).
        self._flush_lock = asyncio.Lock()
        self.rows_written = 0
        self.dropped = 0  # rows lost: dropped from a full buffer, or unwritten at stop
        self.last_error: str | None = None
        self.disk_full = False
        self._dropping = False  # the current failure episode has dropped rows (logged)
        # point id -> latest ts_ms stored (writer thread); None: to be read from the file
        self._latest: dict[int, int] | None = None
        self.staged = 0  # rows in the stage, not merged yet
        self.merges = 0
        self.merged_rows = 0
        self.merge_error: str | None = None
        self._merged_at = clock()
        self._merge_not_before = 0.0  # after a failed merge

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._flush_loop(), name="historian flush")

    async def stop(self, merge: bool = True) -> int:
        """Flush everything still buffered, merge the stage (unless not ``merge``: it stays
        staged, read as before and merged by the next run), then close; returns the rows
        that could not be written (and are lost), after saying so in the log."""
        if self._task:
            await cancel_and_wait([self._task])
            self._task = None
        await self.flush(merge=False)
        if merge and self.staged:
            await self.merge()  # a failed one leaves the stage as it was: read and merged later
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
                db.executescript("BEGIN;" + SCHEMA + "COMMIT;")
                if old is not None and old[0] == "table":
                    n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
                    log.info("historian %s: converting %d rows to the compact format",
                             self.path, n)
                    db.executescript("BEGIN;" + MIGRATE + "COMMIT;")
                db.executescript("BEGIN;" + VIEW + "COMMIT;")
                for pid, device, point in db.execute("SELECT id, device, point FROM points"):
                    self._ids.setdefault(device, {})[point] = pid
                self._latest = latest_ts(db)
                self.staged = staged_rows(db)  # left by a run that stopped before merging
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

    async def flush(self, merge: bool = True) -> int:
        """Write the buffered rows to the stage (one transaction); then merge the stage if
        it is due (``merge``). Returns the rows written while it ran: a flush already under
        way (the flush task's) is waited for and its rows count, so once this returns every
        row recorded before the call is readable or still buffered (not written)."""
        before = self.rows_written
        await self._flush_buffer()
        n = self.rows_written - before
        if merge and self.staged and self._merge_due():
            await self.merge()
        return n

    async def _flush_buffer(self) -> int:
        async with self._flush_lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> int:
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

    def _merge_due(self) -> bool:
        now = self._clock()
        if now < self._merge_not_before:
            return False
        return (self.staged >= self.cfg.merge_rows
                or now - self._merged_at >= self.cfg.merge_interval_s)

    async def merge(self) -> int:
        """Move the staged rows into ``history`` (one transaction). A merge that fails
        leaves the stage as it was (still read by every reader) and is tried again after
        MERGE_RETRY_S; the first failure of an episode is logged. Returns the rows moved."""
        if self._db is None:
            return 0
        try:
            n = await asyncio.to_thread(self._merge)
        except sqlite3.Error as exc:
            why = describe(exc)
            self._merge_not_before = self._clock() + MERGE_RETRY_S
            if self.merge_error != why:
                log.error("historian: %s merging %d staged rows into the history of %s (they "
                          "stay staged, are read as before and the merge is retried)",
                          why, self.staged, self.path)
            self.merge_error = why
            return 0
        if self.merge_error is not None:
            log.info("historian merges into %s recovered", self.path)
            self.merge_error = None
        return n

    def _merge(self) -> int:
        with self._db_lock:
            db = self._db
            if db is None:
                return 0
            db.execute("BEGIN")
            try:
                n = merge(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._merged(n)
            return n

    def _merged(self, n: int) -> None:
        self.staged = 0
        self.merges += 1
        self.merged_rows += n
        self._merged_at = self._clock()

    def _write(self, batch: list[Row], unresolved: int = 0) -> int:
        """Write ``batch`` in one transaction; ``unresolved``: rows in it that carry a
        PointKey instead of an id (new points), given ids here first.

        Rows later than every stored row of their point are appended to the stage; any
        other (a repeated millisecond, a clock stepped back) goes to ``history`` after the
        stage is merged in the same transaction, replacing the row it repeats: the later
        reading wins, and no key is ever both staged and merged."""
        with self._db_lock:
            db = self._db
            if db is None:
                return 0
            new: dict[PointKey, int] = {}
            latest = self._latest
            if latest is None:  # a write failed after changing it: as the file says
                latest = self._latest = latest_ts(db)
            db.execute("BEGIN")
            try:
                if unresolved:
                    batch = self._resolve(db, batch, new)
                staged, late = self._split(batch, latest)
                whole = len(staged) - len(staged) % ROWS_PER_INSERT
                if whole:
                    flat = chain.from_iterable(staged[:whole])  # whole rows per statement
                    db.executemany(_STAGE_MANY,
                                   zip(*[flat] * (5 * ROWS_PER_INSERT), strict=False))
                if whole < len(staged):
                    db.executemany(_STAGE_ONE, staged[whole:])
                merged = -1
                if late:
                    merged = merge(db)
                    db.executemany(_INSERT_ONE, late)
                db.execute("COMMIT")
            except BaseException:
                self._latest = None  # updated for rows that were not written
                if db.in_transaction:  # SQLITE_FULL has already rolled it back
                    db.execute("ROLLBACK")
                raise
            # only ids that were committed: a rolled-back id may be given to another point
            for (device, point, _), pid in new.items():
                self._ids.setdefault(device, {})[point] = pid
            if merged >= 0:
                self._merged(merged)
            else:
                self.staged += len(staged)
            self.rows_written += len(batch)
            return len(batch)

    @staticmethod
    def _split(batch: list[Row], latest: dict[int, int]) -> tuple[list[Row], list[Row]]:
        """(rows to stage, rows to write to ``history``), each in arrival order; ``latest``
        is moved on to the staged rows."""
        get = latest.get
        i = 0
        for row in batch:  # the usual case: every row is later than its point's last
            pid, ms = row[0], row[1]
            if ms <= get(pid, _NO_TS):  # type: ignore[arg-type]
                break
            latest[pid] = ms  # type: ignore[index]
            i += 1
        else:
            return batch, []
        staged, late = batch[:i], []
        for row in batch[i:]:
            pid, ms = row[0], row[1]
            if ms <= get(pid, _NO_TS):  # type: ignore[arg-type]
                late.append(row)
            else:
                latest[pid] = ms  # type: ignore[index]
                staged.append(row)
        return staged, late

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

    def _apply_retention(self, now: float | None = None) -> None:
        """Delete rows older than ``retention_days`` before ``now`` (wall clock), merged
        and staged alike."""
        now = time.time() if now is None else now
        cutoff_ms = round((now - self.cfg.retention_days * 86400.0) * 1000.0)
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
                    staged = db.execute(f"DELETE FROM {STAGE} WHERE ts_ms < ?",  # small
                                        (cutoff_ms,)).rowcount
                    n += staged
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                self.staged -= staged
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
                "last_error": self.last_error, "disk_full": self.disk_full,
                "staged": self.staged, "merges": self.merges, "merged_rows": self.merged_rows,
                "merge_error": self.merge_error}
