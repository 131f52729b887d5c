"""The latest measurements reach the forecaster: the analytics service reads the recent
historian into the forecaster's history (intraday PV starts from the last measured quarter)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gateway.analytics.forecast import Forecaster
from gateway.analytics.service import AnalyticsService
from gateway.analytics.site import PvArray, SiteInfo
from gateway.historian import _SCHEMA, _VIEW

INFO = SiteInfo(48.0, 7.8, "Europe/Berlin", "DE", (PvArray("pv", 11.0, 10.0, 36.0, 180.0),),
                load_ids=("load",))


def historian(path: Path, start_s: float, end_s: float) -> float:
    """p_kw of the PV inverter (4 kW) and the load (7 kW) every minute, as the historian
    stores them; returns the last sample's time."""
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA + _VIEW)
        db.executemany("INSERT INTO points (id, device, point) VALUES (?, ?, 'p_kw')",
                       [(1, "pv"), (2, "load")])
        ts = np.arange(start_s, end_s, 60.0)
        db.executemany("INSERT INTO history (point_id, ts_ms, value, quality) "
                       "VALUES (?, ?, ?, 0)",
                       [(pid, round(t * 1000), kw) for t in ts for pid, kw in ((1, 4.0),
                                                                               (2, 7.0))])
    return float(ts[-1])


async def test_observe_brings_the_history_up_to_the_last_quarter(tmp_path: Path) -> None:
    now = time.time()
    db = tmp_path / "h.sqlite"
    last_s = historian(db, now - 3 * 3600, now)
    old = pd.date_range(pd.Timestamp(now - 3 * 86400, unit="s", tz="UTC").floor("15min"),
                        periods=96, freq="15min")
    fc = Forecaster(INFO, {}, pd.DataFrame({"load_kw": 1.0, "pv_kw": 0.0}, index=old))
    svc = AnalyticsService(INFO, tmp_path / "models", db)
    svc.forecaster = fc
    try:
        await svc.observe_now()
    finally:
        await svc.stop()
    last = fc.history.index[-1]
    assert last == pd.Timestamp(last_s, unit="s", tz="UTC").floor("15min")
    recent = fc.history[fc.history.index > last - pd.Timedelta(hours=2)]
    assert np.allclose(recent["pv_kw"], 4.0) and np.allclose(recent["load_kw"], 7.0)
    assert fc.history.index[0] == old[0]  # the older history is kept
