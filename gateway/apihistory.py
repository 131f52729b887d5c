"""The last hour of the site's power flow from the historian, for the console's sparklines.

API command ``summary_history`` {window_s?: 3600, step_s?: 30} -> {key: [[ts, value], ...]}
with the keys of the live summary (grid_kw, pv_kw, wind_kw, battery_kw, ev_kw, load_kw,
battery_soc_pct). The historian stores a sample when a value changes, so each device's
value is carried forward to every step. Runs in a worker thread (SQLite read, WAL).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.api import ApiError, Caller
from gateway.model import Nature

if TYPE_CHECKING:
    from gateway.daemon import Daemon

SUM_KEYS = {Nature.PV_INVERTER: "pv_kw", Nature.WIND_TURBINE: "wind_kw",
            Nature.BESS: "battery_kw", Nature.EVSE: "ev_kw"}


def _grid_meters(devices: dict[str, tuple[Nature, str | None]]) -> set[str]:
    meters = {d: role for d, (n, role) in devices.items() if n is Nature.METER}
    grid = {d for d, role in meters.items() if role == "grid"}
    if not grid and len(meters) == 1 and next(iter(meters.values())) is None:
        grid = set(meters)
    return grid


Series = list[tuple[float, float]]
IN_LIST_MAX = 500  # point ids in one IN (...); beyond it the stage is filtered here


def _staged(db: sqlite3.Connection, pids: list[int]) -> dict[int, list[tuple[int, float]]]:
    """Good staged samples (ts_ms, value) of these points, not merged yet, by time, in one
    pass over the stage (it has no index); none for a file written before the stage."""
    if not pids or db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                              "name='history_stage'").fetchone() is None:
        return {}
    sql = "SELECT point_id, ts_ms, value FROM history_stage WHERE quality=0 AND value IS NOT NULL"
    args: list[int] = []
    if len(pids) <= IN_LIST_MAX:
        sql += f" AND point_id IN ({','.join('?' * len(pids))})"
        args = pids
    wanted = set(pids)
    out: dict[int, list[tuple[int, float]]] = {}
    for pid, ts, v in db.execute(sql, args):
        if pid in wanted:
            out.setdefault(pid, []).append((ts, float(v)))
    for rows in out.values():
        rows.sort()
    return out


def _point_ids(db: sqlite3.Connection, wanted: Iterable[tuple[str, str]]
               ) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for key in wanted:
        pid = db.execute("SELECT id FROM points WHERE device=? AND point=?", key).fetchone()
        if pid is not None:
            out[key] = int(pid[0])
    return out


def _series(db: sqlite3.Connection, pid: int | None, start: float,
            staged: list[tuple[int, float]]) -> Series:
    """Good samples of one point since ``start``, led by the last one before it; the
    point's ``staged`` samples (all later than its merged ones) included."""
    if pid is None:
        return []
    # on the (point_id, ts_ms) key itself, so each query is a range of one B-tree
    start_ms = math.floor(start * 1000.0)
    before = db.execute("SELECT ts_ms, value FROM history WHERE point_id=? AND ts_ms<? AND "
                        "quality=0 AND value IS NOT NULL ORDER BY ts_ms DESC LIMIT 1",
                        (pid, start_ms)).fetchall()
    rows = db.execute("SELECT ts_ms, value FROM history WHERE point_id=? AND ts_ms>=? AND "
                      "quality=0 AND value IS NOT NULL ORDER BY ts_ms",
                      (pid, start_ms)).fetchall()
    if staged:
        older = [r for r in staged if r[0] < start_ms]
        if older:  # a staged sample is later than every merged one of its point
            before = older[-1:]
        rows += [r for r in staged if r[0] >= start_ms]
    return [(t / 1000.0, float(v)) for t, v in [*before, *rows]]


def _at_steps(series: list[tuple[float, float]], steps: Iterable[float]) -> list[float | None]:
    out: list[float | None] = []
    i, last = 0, None
    for t in steps:
        while i < len(series) and series[i][0] <= t:
            last = series[i][1]
            i += 1
        out.append(last)
    return out


def summary_history(db_path: Path, devices: dict[str, tuple[Nature, str | None]],
                    window_s: float = 3600.0, step_s: float = 30.0,
                    now: float | None = None) -> dict[str, list[list[float]]]:
    if not db_path.is_file():
        return {}
    now = time.time() if now is None else now
    start = now - window_s
    steps = [start + step_s * (i + 1) for i in range(int(window_s // step_s))]
    totals: dict[str, list[float | None]] = {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0,
                         isolation_level=None)
    try:
        # one snapshot for all the queries below: a merge committed between them would
        # otherwise show its rows twice (staged, then merged)
        db.execute("BEGIN")
        grid = _grid_meters(devices)
        ids = _point_ids(db, [(dev, point) for dev, (nature, _) in devices.items()
                              for point in ("p_kw", "soc_pct")])
        staged = _staged(db, list(ids.values()))

        def series(dev: str, point: str) -> Series:
            pid = ids.get((dev, point))
            return _series(db, pid, start, staged.get(pid, []) if pid is not None else [])

        socs: list[list[float | None]] = []
        for dev, (nature, _) in devices.items():
            key = "grid_kw" if dev in grid else SUM_KEYS.get(nature)
            if key is not None:
                vals = _at_steps(series(dev, "p_kw"), steps)
                acc = totals.setdefault(key, [None] * len(steps))
                for j, v in enumerate(vals):
                    if v is not None:
                        acc[j] = (acc[j] or 0.0) + v
            if nature is Nature.BESS:
                socs.append(_at_steps(series(dev, "soc_pct"), steps))
    finally:
        db.close()
    g = totals.get("grid_kw")
    if g is not None:
        load: list[float | None] = []
        for j, gv in enumerate(g):
            if gv is None:
                load.append(None)
                continue
            other = sum((totals.get(k) or [None] * len(steps))[j] or 0.0
                        for k in ("pv_kw", "wind_kw", "battery_kw"))
            load.append(gv + other - ((totals.get("ev_kw") or [None] * len(steps))[j] or 0.0))
        totals["load_kw"] = load
    if socs:
        totals["battery_soc_pct"] = [
            (sum(v for v in col if v is not None) / n) if (n := sum(v is not None for v in col))
            else None for col in zip(*socs, strict=True)]
    return {k: [[t, v] for t, v in zip(steps, vals, strict=True) if v is not None]
            for k, vals in totals.items()}


def register(daemon: Daemon) -> None:
    """Add ``summary_history`` to the daemon's API (when it has a historian)."""
    if daemon.api is None or not daemon.cfg.historian.enabled:
        return
    path = Path(daemon.cfg.historian.path)
    devices = {d.device_id: (d.nature, d.role) for d in daemon.state.devices.values()}

    async def handler(req: dict[str, Any], caller: Caller) -> Any:
        window = req.get("window_s", 3600.0)
        step = req.get("step_s", 30.0)
        if not all(isinstance(x, int | float) for x in (window, step)) or \
                not (60 <= window <= 86400 and 1 <= step <= window):
            raise ApiError("window_s must be 60..86400 and step_s 1..window_s")
        return await asyncio.to_thread(summary_history, path, devices, float(window),
                                       float(step))

    daemon.api.register("summary_history", handler, role="viewer",
                        help="the last hour of the power flow from the historian "
                             "{window_s?, step_s?}")
