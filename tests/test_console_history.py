"""The console's last hour from the historian: per-device values carried forward to each
step and summed like the live summary (grid meter, PV, battery, EVs, load)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.apihistory import summary_history
from gateway.console.data import ConsoleData
from gateway.historian import _SCHEMA, _VIEW
from gateway.model import Nature

SCHEMA = _SCHEMA + _VIEW  # the historian's own tables


def make_db(path: Path, rows: list[tuple[str, str, float, float, int]]) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    ids: dict[tuple[str, str], int] = {}
    for dev, point, ts, value, quality in rows:
        if (dev, point) not in ids:
            ids[(dev, point)] = len(ids) + 1
            db.execute("INSERT INTO points VALUES (?,?,?,?)", (ids[(dev, point)], dev, point, ""))
        db.execute("INSERT INTO history VALUES (?,?,?,?,?)",
                   (ids[(dev, point)], round(ts * 1000), value, None, quality))
    db.commit()
    db.close()


def test_history_carries_values_forward_and_sums_by_nature(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    now = 10_000.0
    make_db(db, [
        ("grid", "p_kw", now - 4000, 10.0, 0),  # before the window: carried in
        ("grid", "p_kw", now - 1800, 20.0, 0),
        ("grid", "p_kw", now - 900, 99.0, 2),  # offline sample: ignored
        ("pv1", "p_kw", now - 3000, 4.0, 0), ("pv2", "p_kw", now - 3000, 6.0, 0),
        ("bat", "p_kw", now - 2000, -5.0, 0), ("bat", "soc_pct", now - 2000, 55.0, 0),
        ("car", "p_kw", now - 600, 11.0, 0),
    ])
    devices = {"grid": (Nature.METER, "grid"), "sub": (Nature.METER, "sub"),
               "pv1": (Nature.PV_INVERTER, None), "pv2": (Nature.PV_INVERTER, None),
               "bat": (Nature.BESS, None), "car": (Nature.EVSE, None)}
    h = summary_history(db, devices, window_s=3600, step_s=600, now=now)
    grid = dict((t, v) for t, v in h["grid_kw"])
    assert grid[now - 3000] == 10.0 and grid[now - 1200] == 20.0 and grid[now] == 20.0
    assert dict((t, v) for t, v in h["pv_kw"])[now] == 10.0
    assert now - 3000 not in dict((t, v) for t, v in h["battery_kw"])  # no value yet
    assert dict((t, v) for t, v in h["ev_kw"])[now] == 11.0
    load = dict((t, v) for t, v in h["load_kw"])
    assert load[now] == 20.0 + 10.0 - 5.0 - 11.0
    assert dict((t, v) for t, v in h["battery_soc_pct"])[now] == 55.0
    assert summary_history(tmp_path / "missing.sqlite", devices) == {}


def test_seeded_history_goes_before_what_the_console_saw() -> None:
    d = ConsoleData()
    d.set_summary({"grid_kw": 3.0}, now=5000.0)
    d.seed_history({"grid_kw": [[4000.0, 1.0], [4500.0, 2.0], [5100.0, 9.0]],
                    "unknown": [[1.0, 1.0]]})
    assert list(d.history["grid_kw"]) == [(4000.0, 1.0), (4500.0, 2.0), (5000.0, 3.0)]
    assert "unknown" not in d.history and d.seeded
