"""The historian's tables and the SQL of its staged writes (see gateway/historian.py).

``history`` is keyed (point_id, ts_ms) for the readers; ``history_stage`` takes each flush
as an append (rowid = arrival order, no index) and is merged into ``history`` in key order
now and then. Both hold the same five columns; the writer keeps the staged keys unique and
absent from ``history`` (a point's staged rows are all later than its merged ones), so a
reader takes ``history UNION ALL history_stage`` without de-duplicating.
"""

from __future__ import annotations

import sqlite3

TABLE = "history"
STAGE = "history_stage"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    UNIQUE (device, point)
);
CREATE TABLE IF NOT EXISTS {TABLE} (
    point_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL,
    text TEXT,
    quality INTEGER NOT NULL,
    PRIMARY KEY (point_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {STAGE} (
    point_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL,
    text TEXT,
    quality INTEGER NOT NULL
);
"""
# Dropped and made again on every open: a database written before the stage existed has
# a view over ``history`` alone.
VIEW = f"""
DROP VIEW IF EXISTS samples;
CREATE VIEW samples AS
    SELECT point_id, ts_ms / 1000.0 AS ts, value, text, quality FROM {TABLE}
    UNION ALL
    SELECT point_id, ts_ms / 1000.0 AS ts, value, text, quality FROM {STAGE};
"""
# A database written before the history table: its rows move over once, on open.
MIGRATE = f"""
INSERT OR REPLACE INTO {TABLE}
    SELECT point_id, CAST(round(ts * 1000) AS INTEGER), value, text, quality FROM samples;
DROP INDEX IF EXISTS samples_ts;
DROP INDEX IF EXISTS samples_point_ts;
DROP TABLE samples;
"""
# Key order, so each point's last page is written once per merge; rowid last, so that of
# two rows with one key the later would win (the writer never stages two, see above).
# The DELETE without WHERE frees the stage's pages in one step, for the next appends.
# The sort spills to an unlinked temporary file beyond ~2 MB (SQLite's default temp_store):
# deleted before writeback, it costs no disk writes (cancelled_write_bytes in
# /proc/self/io), where sorting in memory (temp_store=MEMORY) held ~15 MB more RSS after a
# 240000-row merge for the same CPU.
MERGE = (f"INSERT OR REPLACE INTO {TABLE} SELECT point_id, ts_ms, value, text, quality "
         f"FROM {STAGE} ORDER BY point_id, ts_ms, rowid",
         f"DELETE FROM {STAGE}")


def insert_sql(table: str, rows: int) -> str:
    """One statement inserting ``rows`` buffered rows (point id, ts_ms, value, text,
    quality code with the text bit) into ``table``."""
    one = "(?{0}, ?{1}, ?{2}, CASE WHEN ?{4} & 4 THEN ?{3} END, ?{4} & 3)"
    verb = "INSERT OR REPLACE" if table == TABLE else "INSERT"
    return f"{verb} INTO {table} VALUES " + ", ".join(
        one.format(*range(5 * j + 1, 5 * j + 6)) for j in range(rows))


def staged_rows(db: sqlite3.Connection) -> int:
    return int(db.execute(f"SELECT count(*) FROM {STAGE}").fetchone()[0])


def latest_ts(db: sqlite3.Connection) -> dict[int, int]:
    """point id -> the latest ts_ms stored for it (merged or staged): one key lookup per
    point in ``history``, one pass over the (small) stage."""
    out: dict[int, int] = {}
    for pid, ts in db.execute(f"SELECT p.id, (SELECT MAX(ts_ms) FROM {TABLE} "
                              f"WHERE point_id = p.id) FROM points p"):
        if ts is not None:
            out[pid] = ts
    for pid, ts in db.execute(f"SELECT point_id, MAX(ts_ms) FROM {STAGE} GROUP BY point_id"):
        if ts > out.get(pid, ts - 1):
            out[pid] = ts
    return out


def merge(db: sqlite3.Connection) -> int:
    """Move every staged row into ``history`` in the caller's transaction; returns how many."""
    n = db.execute(MERGE[0]).rowcount
    db.execute(MERGE[1])
    return n
