"""The historian's compact storage: (point, ts_ms) WITHOUT ROWID, deadband, INVALID
readings, the conversion of an old database, and `autogrid export` output that is the same
for the same readings in either format."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from gateway.config.models import Historian as HistorianConfig
from gateway.export import export_csv
from gateway.historian import Historian
from gateway.model import Quality, Reading

T0 = 1_750_000_000.0  # quarter seconds below are exact in binary: both formats agree

# The storage format before this one: a rowid table with seconds as REAL and two indexes.
OLD_SCHEMA = """
CREATE TABLE points (id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL,
                     unit TEXT NOT NULL DEFAULT '', UNIQUE (device, point));
CREATE TABLE samples (point_id INTEGER NOT NULL REFERENCES points(id), ts REAL NOT NULL,
                      value REAL, text TEXT, quality INTEGER NOT NULL);
CREATE INDEX samples_ts ON samples (ts);
CREATE INDEX samples_point_ts ON samples (point_id, ts);
"""
OLD_QUALITY = {Quality.GOOD: 0, Quality.STALE: 1, Quality.OFFLINE: 2}


def readings() -> list[tuple[str, dict[str, Reading]]]:
    """What SiteState announces over 20 polls of two devices: numbers, a bool, a text,
    a device going offline and coming back."""
    out = []
    for k in range(20):
        ts = T0 + 0.25 * k
        q = Quality.OFFLINE if 8 <= k < 11 else Quality.GOOD
        out.append(("meter1", {"p_kw": Reading(10.0 + k % 7 * 0.5, "kW", ts, q),
                               "f_hz": Reading(50.0 + (k % 3) * 0.01, "Hz", ts, q)}))
        out.append(("ev1", {"state": Reading(("charging", "idle")[k % 2], "", ts + 0.125,
                                             Quality.GOOD),
                            "v2g": Reading(k % 4 == 0, "", ts + 0.125, Quality.GOOD)}))
    return out


def write_old_format(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    ids: dict[tuple[str, str], int] = {}
    for device, changed in readings():
        for point, r in changed.items():
            if (device, point) not in ids:
                cur = db.execute("INSERT INTO points (device, point, unit) VALUES (?,?,?)",
                                 (device, point, r.unit))
                ids[(device, point)] = int(cur.lastrowid or 0)
            v = r.value
            db.execute("INSERT INTO samples VALUES (?,?,?,?,?)",
                       (ids[(device, point)], r.ts,
                        float(v) if isinstance(v, int | float) else None,
                        v if isinstance(v, str) else None, OLD_QUALITY[r.quality]))
    db.commit()
    db.close()


async def write_new_format(path: Path, deadband_pct: float = 0.0) -> Historian:
    h = Historian(HistorianConfig(path=path, flush_interval_s=60.0, deadband_pct=deadband_pct))
    await h.start()
    for device, changed in readings():
        h.record(device, changed)
    await h.stop()
    return h


def exports(path: Path) -> list[str]:
    out = []
    for kw in ({}, {"wide": True}, {"devices": ["ev1"]},
               {"start": "2025-06-15T15:06:41+00:00", "end": "2025-06-15T15:06:43.5+00:00"}):
        buf = io.StringIO()
        export_csv(path, buf, **kw)  # type: ignore[arg-type]
        out.append(buf.getvalue())
    return out


async def test_export_is_the_same_for_the_same_readings_in_either_format(
        tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    write_old_format(old)
    await write_new_format(new)
    before, after = exports(old), exports(new)
    assert before[0].count("\n") == 1 + 4 * 20  # every reading, nothing dropped
    assert before[3].count("\n") > 1  # the time window selects something
    assert after == before


async def test_rows_are_keyed_by_point_and_millisecond_without_rowid(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    await write_new_format(path)
    db = sqlite3.connect(path)
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name='history'").fetchone()[0]
    assert "WITHOUT ROWID" in sql and "PRIMARY KEY (point_id, ts_ms)" in sql
    indexes = db.execute("SELECT name FROM sqlite_master WHERE type='index' AND "
                         "tbl_name='history' AND sql IS NOT NULL").fetchall()
    assert indexes == []  # the primary key is the only index
    first = db.execute("SELECT ts_ms, typeof(ts_ms) FROM history ORDER BY ts_ms LIMIT 1")
    assert first.fetchone() == (round(T0 * 1000), "integer")
    # readers written against the old table still find seconds in `samples`
    assert db.execute("SELECT min(ts) FROM samples").fetchone()[0] == T0
    db.close()


async def test_an_old_database_is_converted_on_open(tmp_path: Path) -> None:
    path, reference = tmp_path / "h.sqlite", tmp_path / "ref.sqlite"
    write_old_format(path)
    write_old_format(reference)
    h = Historian(HistorianConfig(path=path))
    await h.start()
    await h.stop()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM history").fetchone()[0] == 4 * 20
    assert db.execute("SELECT type FROM sqlite_master WHERE name='samples'").fetchone() == \
        ("view",)
    db.close()
    assert exports(path) == exports(reference)


async def test_deadband_keeps_only_moves_larger_than_it(tmp_path: Path) -> None:
    h = Historian(HistorianConfig(path=tmp_path / "h.sqlite", deadband_pct=5.0))
    await h.start()
    try:
        for k, (v, q) in enumerate([(100.0, Quality.GOOD), (103.0, Quality.GOOD),
                                    (104.9, Quality.GOOD), (106.0, Quality.GOOD),
                                    (106.0, Quality.STALE), (90.0, Quality.GOOD),
                                    (0.0, Quality.GOOD), (0.001, Quality.GOOD)]):
            h.record("pv1", {"p_kw": Reading(v, "kW", T0 + k, q)})
        h.record("ev1", {"state": Reading("idle", "", T0, Quality.GOOD)})
        h.record("ev1", {"state": Reading("charging", "", T0 + 1, Quality.GOOD)})
    finally:
        await h.stop()
    db = sqlite3.connect(tmp_path / "h.sqlite")
    kept = db.execute("SELECT s.value, s.quality FROM history s JOIN points p "
                      "ON p.id = s.point_id WHERE p.point = 'p_kw' ORDER BY ts_ms").fetchall()
    texts = db.execute("SELECT count(*) FROM history WHERE text IS NOT NULL").fetchone()[0]
    db.close()
    # 103 and 104.9 are within 5 % of 100; 106 is not; a quality change is always kept
    assert kept == [(100.0, 0), (106.0, 0), (106.0, 1), (90.0, 0), (0.0, 0), (0.001, 0)]
    assert h.suppressed == 2
    assert texts == 2


async def test_invalid_readings_are_stored_and_exported_as_invalid(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    h = Historian(HistorianConfig(path=path))
    await h.start()
    h.record("bms1", {"cell_temp_max_c": Reading(6553.5, "°C", T0, Quality.INVALID)})
    await h.stop()
    assert h.last_error is None and h.rows_written == 1
    buf = io.StringIO()
    export_csv(path, buf)
    assert buf.getvalue().splitlines()[1].endswith(",bms1,cell_temp_max_c,6553.5,°C,invalid")


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


async def test_a_point_first_seen_in_a_failed_write_keeps_its_own_rows(tmp_path: Path) -> None:
    # The write that gives a new point its id can fail (disk full) and roll back; the id
    # it was given must not be reused for it, or another new point could receive the same
    # id from SQLite and the two points' rows would be stored as one point's.
    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, batch_size=1000, flush_interval_s=3600))
    await h.start()
    try:
        assert h._db is not None
        pages = h._db.execute("PRAGMA page_count").fetchone()[0]
        h._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        for k in range(40):
            h.record("pv", {"state": Reading(f"text {k} " + "x" * 200, "", T0 + k)})
        assert await h.flush() == 0  # refused, kept for the retry
        h._db.execute("PRAGMA max_page_count = 1000000")
        h.record("pv", {"p_kw": Reading(7.5, "kW", T0 + 100)})
        assert await h.flush() == 41
    finally:
        await h.stop()
    with sqlite3.connect(path) as con:
        got = con.execute("SELECT p.point, count(*), min(s.value), min(s.text) FROM samples s "
                          "JOIN points p ON p.id = s.point_id GROUP BY p.point "
                          "ORDER BY p.point").fetchall()
    assert got == [("p_kw", 1, 7.5, None), ("state", 40, None, "text 0 " + "x" * 200)]


async def test_every_kind_of_value_is_stored_as_its_columns_say(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, flush_interval_s=3600))
    await h.start()
    try:
        h.record("d", {"f": Reading(1.5, "kW", T0), "i": Reading(3, "", T0),
                       "b": Reading(True, "", T0), "s": Reading("charging", "", T0),
                       "e": Reading("", "", T0), "n": Reading(None, "kW", T0, Quality.OFFLINE),
                       "x": Reading(float("nan"), "kW", T0, Quality.INVALID)})
        # one point twice in one millisecond, a text then no value: the later one wins
        h.record("d", {"t": Reading("idle", "", T0 + 1)})
        h.record("d", {"t": Reading(None, "", T0 + 1.0001, Quality.STALE)})
        assert await h.flush() == 9
    finally:
        await h.stop()
    with sqlite3.connect(path) as con:
        got = con.execute("SELECT p.point, h.ts_ms, h.value, h.text, h.quality FROM history h "
                          "JOIN points p ON p.id = h.point_id ORDER BY p.point").fetchall()
    ms = round(T0 * 1000)
    assert got == [("b", ms, 1.0, None, 0), ("e", ms, None, "", 0), ("f", ms, 1.5, None, 0),
                   ("i", ms, 3.0, None, 0), ("n", ms, None, None, 2),
                   ("s", ms, None, "charging", 0), ("t", ms + 1000, None, None, 1),
                   ("x", ms, None, None, 3)]


async def test_rows_written_many_to_a_statement_keep_their_order(tmp_path: Path) -> None:
    from gateway.historian import ROWS_PER_INSERT

    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, flush_interval_s=3600,
                                  batch_size=10 * ROWS_PER_INSERT))
    await h.start()
    n = 3 * ROWS_PER_INSERT + 7  # whole statements and a remainder
    try:
        for k in range(n):  # every 5th reading repeats the millisecond before it
            ts = T0 + (k - (k % 5 == 4)) * 0.001
            h.record("d", {"p": Reading(float(k), "kW", ts),
                           "s": Reading(f"s{k}" if k % 3 else None, "", ts)})
        assert await h.flush() == 2 * n
    finally:
        await h.stop()
    expected: dict[tuple[str, int], tuple[object, object]] = {}
    for k in range(n):
        ms = round((T0 + (k - (k % 5 == 4)) * 0.001) * 1000)
        expected[("p", ms)] = (float(k), None)
        expected[("s", ms)] = (None, f"s{k}" if k % 3 else None)
    with sqlite3.connect(path) as con:
        got = {(p, ts): (v, t) for p, ts, v, t in con.execute(
            "SELECT p.point, h.ts_ms, h.value, h.text FROM history h "
            "JOIN points p ON p.id = h.point_id")}
    assert got == expected
