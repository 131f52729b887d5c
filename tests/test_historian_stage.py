"""The historian's staging table: flushes append to ``history_stage`` and a merge moves the
rows into the keyed ``history``. Every reader sees staged and merged rows alike, export
is byte-identical before and after a merge, a process killed between a flush and a merge
loses no flushed row, retention deletes from both, the deadband holds across a merge, a
merge that meets a full disk leaves the stage intact and is retried, and a repeated key
resolves as INSERT OR REPLACE (the later reading wins)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gateway.analytics import history_sql
from gateway.analytics.data import device_rows
from gateway.analytics.detect import historian_span
from gateway.apihistory import summary_history
from gateway.config.loader import check_config
from gateway.config.models import Historian as HistorianConfig
from gateway.control.alarms import ControlStore
from gateway.control.component import historian_alarm
from gateway.export import export_csv
from gateway.historian import MERGE_RETRY_S, Historian
from gateway.model import Nature, Quality, Reading
from tests.test_config_loader import BASE, tpl_dir, write  # noqa: F401 (fixture)
from tests.waiting import WAIT_S

T0 = 1_750_000_000.0
REPO = Path(__file__).resolve().parent.parent
DEVICES = {"meter1": (Nature.METER, "grid"), "pv1": (Nature.PV_INVERTER, None),
           "bess1": (Nature.BESS, None)}


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def poll(k: int) -> list[tuple[str, dict[str, Reading]]]:
    """What SiteState announces at poll ``k`` (0.5 s apart): numbers, a text, and a device
    offline for a while."""
    ts = T0 + 0.5 * k
    q = Quality.OFFLINE if 30 <= k < 34 else Quality.GOOD
    return [("meter1", {"p_kw": Reading(10.0 + k % 7 * 0.5, "kW", ts, q),
                        "f_hz": Reading(50.0 + k % 3 * 0.01, "Hz", ts, q)}),
            ("pv1", {"p_kw": Reading(float(k % 11), "kW", ts + 0.003)}),
            ("bess1", {"p_kw": Reading(-2.0 + k % 5, "kW", ts + 0.007),
                       "soc_pct": Reading(40.0 + k % 9, "%", ts + 0.007),
                       "mode": Reading(("idle", "charge")[k % 2], "", ts + 0.007)})]


def config(path: Path, **kw: object) -> HistorianConfig:
    return HistorianConfig(path=path, flush_interval_s=3600, retention_days=36500.0,
                           **kw)  # type: ignore[arg-type]


async def write_polls(h: Historian, polls: range) -> None:
    for k in polls:
        for device, changed in poll(k):
            h.record(device, changed)
    await h.flush(merge=False)


async def half_staged(path: Path) -> Historian:
    """Polls 0..59 merged, 60..119 left in the stage (the historian stopped unmerged)."""
    h = Historian(config(path))
    await h.start()
    await write_polls(h, range(60))
    assert await h.merge() == 60 * 6
    await write_polls(h, range(60, 120))
    await h.stop(merge=False)
    return h


async def all_merged(path: Path) -> None:
    h = Historian(config(path))
    await h.start()
    await write_polls(h, range(120))
    await h.stop()


def counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return (db.execute("SELECT count(*) FROM history").fetchone()[0],
                db.execute("SELECT count(*) FROM history_stage").fetchone()[0])


def exports(path: Path) -> list[str]:
    out = []
    for kw in ({}, {"wide": True}, {"devices": ["bess1"]},
               {"start": "2025-06-15T15:06:55+00:00", "end": "2025-06-15T15:07:20+00:00"}):
        buf = io.StringIO()
        export_csv(path, buf, **kw)  # type: ignore[arg-type]
        out.append(buf.getvalue())
    return out


def rows_of(df: pd.DataFrame) -> list[str]:
    """A frame's rows, comparable (NaN equals NaN) whatever the order of equal times."""
    assert list(df["ts"]) == sorted(df["ts"])  # by time
    return sorted(repr(tuple(r)) for r in df.itertuples(index=False))


def readers(path: Path) -> dict[str, object]:
    """What every reader of the historian file returns."""
    out: dict[str, object] = {}
    with sqlite3.connect(path) as db:
        out["view"] = db.execute("SELECT point_id, ts, value, text, quality FROM samples "
                                 "ORDER BY point_id, ts").fetchall()
        lay = history_sql.layout(db)
        for name, (sql, args) in {
                "devices": history_sql.points_of_devices(lay, list(DEVICES), "p_kw", T0 + 20),
                "device": history_sql.points_of_device(lay, "bess1", ["p_kw", "soc_pct"],
                                                       None),
                "until": history_sql.all_points_until(lay, T0 + 45)}.items():
            out[name] = rows_of(pd.read_sql_query(sql, db, params=args))
    out["device_rows"] = rows_of(device_rows(path, "bess1", ["p_kw", "soc_pct"], T0 + 10))
    out["span"] = historian_span(path)
    for now in (T0 + 40, T0 + 70):  # a window within the merged rows, one over both
        out[f"summary{now}"] = summary_history(path, DEVICES, window_s=60.0, step_s=5.0,
                                               now=now)
    return out


async def test_readers_see_staged_and_merged_rows_alike(tmp_path: Path) -> None:
    staged, merged = tmp_path / "staged.sqlite", tmp_path / "merged.sqlite"
    await half_staged(staged)
    await all_merged(merged)
    assert counts(staged) == (60 * 6, 60 * 6) and counts(merged) == (120 * 6, 0)
    got, want = readers(staged), readers(merged)
    assert len(want["view"]) == 120 * 6  # type: ignore[arg-type]
    assert want["span"] == (T0, T0 + 0.5 * 119 + 0.007)
    assert want["summary" + str(T0 + 70)]["battery_soc_pct"][-1] == [  # type: ignore[index]
        T0 + 70, 40.0 + 119 % 9]  # the last staged value reaches the console
    for key in want:
        assert got[key] == want[key], key
    assert exports(staged) == exports(merged)


async def test_export_is_byte_identical_before_and_after_a_merge(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    await half_staged(path)
    before = exports(path)
    assert before[0].count("\n") == 1 + 120 * 6 and before[3].count("\n") > 1
    h = Historian(config(path))
    await h.start()
    assert h.staged == 60 * 6  # what the last run left, counted
    await h.stop()  # merges it
    assert counts(path) == (120 * 6, 0) and h.merges == 1
    assert exports(path) == before


CHILD = """
import asyncio, sys, time
from pathlib import Path
from gateway.config.models import Historian as HistorianConfig
from gateway.historian import Historian
from gateway.model import Reading

async def main():
    h = Historian(HistorianConfig(path=Path(sys.argv[1]), flush_interval_s=3600,
                                  merge_interval_s=3600, retention_days=36500))
    await h.start()
    for k in range(50):
        h.record("pv1", {"p_kw": Reading(float(k), "kW", 1750000000.0 + k)})
    await h.flush()
    print(h.rows_written, h.staged, h.merges, flush=True)
    time.sleep(60)  # killed here, between the flush and any merge

asyncio.run(main())
"""


def test_a_process_killed_after_a_flush_loses_no_flushed_row(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child's own timeout bounds this (60 s)
        assert line.split() == ["50", "50", "0"], line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT_S)
    assert child.returncode == -signal.SIGKILL
    assert counts(path) == (0, 50)  # all staged, readable before any merge
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), min(value), max(value) FROM samples"
                          ).fetchone() == (50, 0.0, 49.0)
    h = Historian(config(path))
    await_run(h.start())
    h.record("pv1", {"p_kw": Reading(50.0, "kW", T0 + 50)})
    await_run(h.stop())
    assert counts(path) == (51, 0)


def await_run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def test_retention_deletes_merged_and_staged_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    h = Historian(HistorianConfig(path=path, flush_interval_s=3600, retention_days=1.0))
    await h.start()
    try:
        day = 86400.0
        for ts in (T0 - 3 * day, T0 - 0.5 * day):
            h.record("pv1", {"p_kw": Reading(1.0, "kW", ts)})
        await h.flush(merge=False)
        await h.merge()
        for ts in (T0 - 2 * day, T0 - 0.25 * day):  # another point: staged, not merged
            h.record("pv1", {"q_kvar": Reading(2.0, "kvar", ts)})
        await h.flush(merge=False)
        assert counts(path) == (2, 2) and h.staged == 2
        await asyncio.to_thread(h._apply_retention, T0)
        assert counts(path) == (1, 1) and h.staged == 1
        with sqlite3.connect(path) as db:
            kept = db.execute("SELECT ts FROM samples ORDER BY ts").fetchall()
        assert kept == [(T0 - 0.5 * day,), (T0 - 0.25 * day,)]
    finally:
        await h.stop()


async def test_deadband_holds_across_a_merge(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    h = Historian(config(path, deadband_pct=5.0))
    await h.start()
    try:
        h.record("pv1", {"p_kw": Reading(100.0, "kW", T0)})
        h.record("pv1", {"p_kw": Reading(103.0, "kW", T0 + 1)})
        await h.flush(merge=False)
        assert await h.merge() == 1
        for k, v in enumerate([104.9, 106.0, 108.0, 111.5], start=2):
            h.record("pv1", {"p_kw": Reading(v, "kW", T0 + k)})
        await h.flush(merge=False)
        assert counts(path) == (1, 2)
    finally:
        await h.stop()
    with sqlite3.connect(path) as db:
        kept = db.execute("SELECT value FROM samples ORDER BY ts").fetchall()
    # 103, 104.9 within 5 % of 100 (merged); 108 within 5 % of 106 (staged)
    assert kept == [(100.0,), (106.0,), (111.5,)] and h.suppressed == 3


async def test_a_merge_on_a_full_disk_keeps_the_stage_and_is_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "h.sqlite"
    clock = Clock()
    h = Historian(config(path, merge_interval_s=60.0), clock=clock)
    await h.start()
    caplog.set_level(logging.INFO, logger="autogrid.historian")
    try:
        for k in range(400):  # several pages of history to make
            h.record("ev1", {"state": Reading(f"text {k} " + "x" * 100, "", T0 + k)})
        await h.flush()
        assert h.staged == 400 and h.merges == 0  # not due yet
        assert h._db is not None
        pages = h._db.execute("PRAGMA page_count").fetchone()[0]
        h._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        clock.now += 60.0
        assert await h.flush() == 0  # due: the merge fails
        assert h.merge_error == "disk full" and h.merges == 0 and h.staged == 400
        assert counts(path) == (0, 400)
        alarms = ControlStore(tmp_path / "control.sqlite")
        alarms.open()
        historian_alarm(alarms, h)
        raised = alarms.alarms["historian:merge"]
        assert raised.active and raised.severity == "warning"
        assert raised.message.startswith(f"disk full: cannot merge 400 staged rows into the "
                                         f"history of {path}")
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM samples").fetchone()[0] == 400
        msgs = [r.getMessage() for r in caplog.records if r.name == "autogrid.historian"]
        assert msgs == [f"historian: disk full merging 400 staged rows into the history of "
                        f"{path} (they stay staged, are read as before and the merge is "
                        "retried)"]
        h._db.execute("PRAGMA max_page_count = 1000000")
        await h.flush()
        assert h.merges == 0  # not before the retry delay
        clock.now += MERGE_RETRY_S
        await h.flush()
        assert h.merges == 1 and h.merge_error is None and h.stats()["merge_error"] is None
        assert counts(path) == (400, 0)
        historian_alarm(alarms, h)
        assert not alarms.alarms["historian:merge"].active
        alarms.close()
        assert caplog.records[-1].getMessage() == f"historian merges into {path} recovered"
    finally:
        await h.stop()


async def test_merges_come_at_the_interval_or_at_merge_rows(tmp_path: Path) -> None:
    clock = Clock()
    h = Historian(config(tmp_path / "h.sqlite", merge_interval_s=30.0, merge_rows=25),
                  clock=clock)
    await h.start()
    try:
        await write_polls(h, range(2))  # 12 rows
        await h.flush()
        assert (h.staged, h.merges) == (12, 0)
        clock.now += 30.0
        await h.flush()
        assert (h.staged, h.merges, h.merged_rows) == (0, 1, 12)
        await write_polls(h, range(2, 7))  # 30 rows, more than merge_rows
        await h.flush()
        assert (h.staged, h.merges, h.merged_rows) == (0, 2, 42)
    finally:
        await h.stop()


async def test_a_repeated_key_replaces_the_staged_row(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    h = Historian(config(path))
    await h.start()
    try:
        h.record("pv1", {"p_kw": Reading(1.0, "kW", T0), "q": Reading(1.0, "kW", T0)})
        h.record("pv1", {"p_kw": Reading(2.0, "kW", T0 + 1)})
        await h.flush(merge=False)
        assert counts(path) == (0, 3)
        # the same millisecond again, and a clock stepped back by half a second
        h.record("pv1", {"p_kw": Reading(3.0, "kW", T0 + 1.0002)})
        h.record("pv1", {"p_kw": Reading(4.0, "kW", T0 + 0.5)})
        h.record("pv1", {"q": Reading(5.0, "kW", T0 + 2)})
        await h.flush(merge=False)
        assert counts(path) == (5, 0)  # staged rows merged first, in the same transaction
        h.record("pv1", {"p_kw": Reading(6.0, "kW", T0 + 3)})
        await h.flush(merge=False)
        assert counts(path) == (5, 1)
    finally:
        await h.stop(merge=False)
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT p.point, s.ts, s.value FROM samples s JOIN points p "
                         "ON p.id = s.point_id ORDER BY p.point, s.ts").fetchall()
    assert got == [("p_kw", T0, 1.0), ("p_kw", T0 + 0.5, 4.0), ("p_kw", T0 + 1, 3.0),
                   ("p_kw", T0 + 3, 6.0), ("q", T0, 1.0), ("q", T0 + 2, 5.0)]
    # a new run knows the latest stored times: a repeat of a staged key is not staged twice
    h = Historian(config(path))
    await h.start()
    h.record("pv1", {"p_kw": Reading(7.0, "kW", T0 + 3)})
    await h.stop(merge=False)
    assert counts(path) == (6, 0)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM samples WHERE ts = ?", (T0 + 3,)).fetchall() == \
            [(7.0,)]


@pytest.mark.parametrize(("line", "message"), [
    ("merge_interval_s: 0", "greater than or equal to 1"),
    ("merge_interval_s: 7200", "less than or equal to 3600"),
    ("merge_rows: 0", "greater than or equal to 1"),
    ("merge_rows: lots", "valid integer")])
def test_merge_settings_are_checked(tmp_path: Path, tpl_dir: Path,  # noqa: F811
                                    line: str, message: str) -> None:
    text = BASE.replace("historian:\n  path: history.sqlite\n",
                        f"historian:\n  path: history.sqlite\n  {line}\n")
    assert text != BASE
    problems = check_config(write(tmp_path, text), template_dir=tpl_dir)
    assert len(problems) == 1, problems
    p = problems[0]
    assert p.path == "historian." + line.split(":")[0] and message in p.message, str(p)
    assert p.mark is not None and p.mark.line == BASE.count("\n") + 1


# The compact format as written before the stage existed: history and a view over it.
UNSTAGED_SCHEMA = """
CREATE TABLE points (id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL,
                     unit TEXT NOT NULL DEFAULT '', UNIQUE (device, point));
CREATE TABLE history (point_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value REAL,
                      text TEXT, quality INTEGER NOT NULL, PRIMARY KEY (point_id, ts_ms))
                      WITHOUT ROWID;
CREATE VIEW samples AS
    SELECT point_id, ts_ms / 1000.0 AS ts, value, text, quality FROM history;
"""


async def test_a_file_from_before_the_stage_is_read_and_then_gains_it(tmp_path: Path) -> None:
    path, reference = tmp_path / "h.sqlite", tmp_path / "ref.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(UNSTAGED_SCHEMA)
        db.execute("INSERT INTO points VALUES (1, 'pv1', 'p_kw', 'kW')")
        db.executemany("INSERT INTO history VALUES (1, ?, ?, NULL, 0)",
                       [(round((T0 + k) * 1000), float(k)) for k in range(5)])
    db.close()
    with sqlite3.connect(path) as db:
        assert history_sql.layout(db) == history_sql.UNSTAGED
    old = exports(path)
    assert old[0].count("\n") == 1 + 5
    h = Historian(config(path))
    await h.start()
    for k in range(5, 8):
        h.record("pv1", {"p_kw": Reading(float(k), "kW", T0 + k)})
    await h.stop(merge=False)
    assert counts(path) == (5, 3)
    h = Historian(config(reference))
    await h.start()
    for k in range(8):
        h.record("pv1", {"p_kw": Reading(float(k), "kW", T0 + k)})
    await h.stop()
    assert exports(path) == exports(reference)
    assert exports(path)[0].startswith(old[0])  # the old rows, then the new ones
    assert readers(path)["view"] == readers(reference)["view"]
