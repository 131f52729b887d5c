"""The analytics read the historian by its primary key (point_id, ts_ms), not through the
``samples`` view whose computed ``ts`` no index holds, and get exactly the rows the view
gave: the query plans say which key range each point reads, the results are compared
with the view's on the same file (time bounds on and between rows included)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from gateway.analytics import history_sql
from gateway.analytics.data import device_rows, historian_targets
from gateway.analytics.detect import historian_span, historian_telemetry
from gateway.analytics.site import SiteInfo
from gateway.config.models import Historian as HistorianConfig
from gateway.historian import Historian
from gateway.model import Quality, Reading

T0 = 1_750_000_000.0
DEVICES = ("meter1", "pv1", "bess1", "ev1")


async def _fill(path: Path) -> None:
    h = Historian(HistorianConfig(path=path, flush_interval_s=3600))
    await h.start()
    try:
        for k in range(600):
            ts = T0 + k * 0.7 + (k % 3) * 0.001  # millisecond times, not all round
            q = Quality.OFFLINE if 200 <= k < 220 else Quality.GOOD
            for i, dev in enumerate(DEVICES):
                h.record(dev, {"p_kw": Reading(float(k % 17 + i), "kW", ts + i * 0.013, q),
                               "soc_pct": Reading(50.0 + k % 9, "%", ts + i * 0.013, q),
                               "state": Reading(("a", "b")[k % 2], "", ts, q)})
    finally:
        await h.stop()


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hist") / "history.sqlite"
    asyncio.run(_fill(path))
    return path


def _view(db_path: Path, sql: str, args: list[object]) -> pd.DataFrame:
    with sqlite3.connect(db_path) as db:
        return pd.read_sql_query(sql, db, params=args)


def _plan(db_path: Path, sql: str, args: list[object]) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args)]


def _info() -> SiteInfo:
    return SiteInfo(load_ids=("ev1",), bess_ids=("bess1",), grid_meter="meter1")


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def test_every_query_reads_history_by_its_key_range(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        lay = history_sql.layout(db)
    assert lay == history_sql.COMPACT
    since = T0 + 100.0
    cases = [history_sql.points_of_devices(lay, list(DEVICES), "p_kw", since),
             history_sql.points_of_device(lay, "bess1", ["p_kw", "soc_pct"], since)]
    for sql, args in cases:
        plan = _plan(db_path, sql, args)
        assert "SEARCH h USING PRIMARY KEY (point_id=? AND ts_ms>?)" in plan, plan
        assert not [p for p in plan if p.startswith("SCAN h")], plan
        # the staged rows (no index): one pass over the stage, each row's point by its id
        assert plan.count("SCAN st") == 1, plan
        assert "SEARCH p USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    sql, args = history_sql.all_points_until(lay, T0 + 100.0)
    plan = _plan(db_path, sql, args)
    assert "SEARCH h USING PRIMARY KEY (point_id=? AND ts_ms<?)" in plan, plan
    plan = _plan(db_path, history_sql.span(lay), [])
    assert plan.count("SEARCH history USING PRIMARY KEY (point_id=?)") == 2, plan
    assert "SCAN history" not in plan, plan
    # what the view gave: the time bound reaches no index, a point's whole history is read
    view = _plan(db_path, "SELECT s.ts FROM samples s JOIN points p ON p.id = s.point_id "
                          "WHERE p.device = ? AND p.point = ? AND s.ts >= ?",
                 ["bess1", "p_kw", since])
    assert not [p for p in view if "ts_ms>" in p], view
    assert "SCAN history" in _plan(db_path, "SELECT MIN(ts), MAX(ts) FROM samples", [])


@pytest.mark.parametrize("since", [None, T0 + 140.0, T0 + 140.7 + 0.013, T0 + 140.0004])
def test_readers_return_what_the_view_returned(db_path: Path, since: float | None) -> None:
    # bounds: none, one between rows, one equal to a row's float time, one inside a ms
    where, args = ("", []) if since is None else (" AND s.ts >= ?", [since])
    old = _view(db_path, "SELECT p.point, s.ts, s.value FROM samples s JOIN points p ON "
                         "p.id = s.point_id WHERE p.device = ? AND s.quality = 0 AND p.point "
                         "IN (?,?)" + where + " ORDER BY s.ts",
                ["bess1", "p_kw", "soc_pct", *args])
    new = device_rows(db_path, "bess1", ["p_kw", "soc_pct"], since)
    assert len(new) > 0
    pd.testing.assert_frame_equal(_sorted(new, ["point", "ts"]), _sorted(old, ["point", "ts"]))

    old = _view(db_path, "SELECT p.device, s.ts, s.value FROM samples s JOIN points p ON "
                         "p.id = s.point_id WHERE p.point = 'p_kw' AND s.quality = 0 AND "
                         "p.device IN (?,?,?)" + where + " ORDER BY s.ts",
                ["ev1", "bess1", "meter1", *args])
    with sqlite3.connect(db_path) as db:
        sql, qargs = history_sql.points_of_devices(history_sql.layout(db),
                                                   ["ev1", "bess1", "meter1"], "p_kw", since)
        new = pd.read_sql_query(sql, db, params=qargs)
    pd.testing.assert_frame_equal(_sorted(new, ["device", "ts"]),
                                  _sorted(old, ["device", "ts"]))
    targets = historian_targets(db_path, _info(), since)
    assert len(targets) > 0 and list(targets.columns) == ["load_kw"]


@pytest.mark.parametrize("until", [T0 + 300.0, T0 + 300.7 + 0.013 * 2, T0 + 1000.0])
def test_telemetry_and_span_are_the_views(db_path: Path, until: float) -> None:
    old = _view(db_path, "SELECT p.device, p.point, s.ts, s.value, s.quality FROM samples s "
                         "JOIN points p ON p.id = s.point_id WHERE s.ts <= ? ORDER BY s.ts",
                [until])
    with sqlite3.connect(db_path) as db:
        sql, args = history_sql.all_points_until(history_sql.layout(db), until)
        new = pd.read_sql_query(sql, db, params=args)
    keys = ["device", "point", "ts"]
    pd.testing.assert_frame_equal(_sorted(new, keys), _sorted(old, keys))
    tel = historian_telemetry(db_path, T0 + 10.0, until, 5.0)
    assert set(tel) == set(DEVICES)
    with sqlite3.connect(db_path) as db:
        lo, hi = db.execute("SELECT MIN(ts), MAX(ts) FROM samples").fetchone()
    assert historian_span(db_path) == (lo, hi)


def test_bounds_in_seconds_select_the_same_milliseconds_as_the_view() -> None:
    lay = history_sql.COMPACT
    for s in (0.1 + 0.2, 1.0005, T0 + 0.0015, T0 + 140.713, -0.0004, 12.0):
        lo, hi = lay.at_or_after(s), lay.at_or_before(s)
        assert isinstance(lo, int) and isinstance(hi, int)
        assert lo / 1000.0 >= s > (lo - 1) / 1000.0
        assert hi / 1000.0 <= s < (hi + 1) / 1000.0
