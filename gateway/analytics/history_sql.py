"""The SQL the analytics read the historian with, shaped for its primary key.

The historian keys ``history`` by (point_id, ts_ms). The ``samples`` view computes
``ts = ts_ms / 1000.0``, which no index holds: a time bound on it reads a point's whole
history. These queries walk ``points`` first (CROSS JOIN fixes that order) and bound
``ts_ms`` itself, so each point is one range of the key. Bounds in seconds become the
integer milliseconds that select exactly the rows the view's ``ts`` comparison would.
A database still in the format before ``history`` (a ``samples`` table with REAL
seconds) is read the same way through that table.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Where a historian file keeps its samples: the table, the time column and its
    scale (units per second)."""

    table: str
    ts_col: str
    scale: float

    @property
    def ts(self) -> str:
        """SQL of a sample's time in seconds (as the ``samples`` view gives it)."""
        return f"h.{self.ts_col} / 1000.0" if self.scale == 1000.0 else f"h.{self.ts_col}"

    def at_or_after(self, s: float) -> float | int:
        """The bound ``b`` for ``ts_col >= b`` that keeps exactly the rows with ts >= s."""
        if self.scale != 1000.0:
            return s
        t = math.ceil(s * 1000.0)
        while (t - 1) / 1000.0 >= s:
            t -= 1
        while t / 1000.0 < s:
            t += 1
        return t

    def at_or_before(self, s: float) -> float | int:
        """The bound ``b`` for ``ts_col <= b`` that keeps exactly the rows with ts <= s."""
        if self.scale != 1000.0:
            return s
        t = math.floor(s * 1000.0)
        while (t + 1) / 1000.0 <= s:
            t += 1
        while t / 1000.0 > s:
            t -= 1
        return t


COMPACT = Layout("history", "ts_ms", 1000.0)
OLD = Layout("samples", "ts", 1.0)


def layout(db: sqlite3.Connection) -> Layout:
    compact = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                         "name='history'").fetchone() is not None
    return COMPACT if compact else OLD


def _good_samples(lay: Layout, label: str, fixed: str, fixed_value: str, among: list[str],
                  since_s: float | None) -> tuple[str, list[str | float | int]]:
    """Good samples (``label``, ts, value) where points.``fixed`` is ``fixed_value`` and the
    other of (device, point) is one of ``among``, by time."""
    sql = (f"SELECT p.{label}, {lay.ts} AS ts, h.value FROM points p "
           f"CROSS JOIN {lay.table} h ON h.point_id = p.id "
           f"WHERE p.{fixed} = ? AND p.{label} IN ({','.join('?' * len(among))}) "
           "AND h.quality = 0")
    args: list[str | float | int] = [fixed_value, *among]
    if since_s is not None:
        sql += f" AND h.{lay.ts_col} >= ?"
        args.append(lay.at_or_after(since_s))
    return sql + f" ORDER BY h.{lay.ts_col}", args


def points_of_devices(lay: Layout, devices: list[str], point: str,
                      since_s: float | None) -> tuple[str, list[str | float | int]]:
    """Good samples (device, ts, value) of one point of several devices, by time."""
    return _good_samples(lay, "device", "point", point, devices, since_s)


def points_of_device(lay: Layout, device: str, points: list[str] | tuple[str, ...],
                     since_s: float | None) -> tuple[str, list[str | float | int]]:
    """Good samples (point, ts, value) of several points of one device, by time."""
    return _good_samples(lay, "point", "device", device, list(points), since_s)


def all_points_until(lay: Layout, until_s: float) -> tuple[str, list[str | float | int]]:
    """Every sample (device, point, ts, value, quality) up to ``until_s``, by time."""
    return (f"SELECT p.device, p.point, {lay.ts} AS ts, h.value, h.quality FROM points p "
            f"CROSS JOIN {lay.table} h ON h.point_id = p.id "
            f"WHERE h.{lay.ts_col} <= ? ORDER BY h.{lay.ts_col}", [lay.at_or_before(until_s)])


def span(lay: Layout) -> str:
    """First and last sample time in seconds: per point, the ends of its key range."""
    first = f"(SELECT MIN({lay.ts_col}) FROM {lay.table} WHERE point_id = p.id)"
    last = f"(SELECT MAX({lay.ts_col}) FROM {lay.table} WHERE point_id = p.id)"
    return (f"SELECT MIN(lo) / {lay.scale}, MAX(hi) / {lay.scale} FROM "
            f"(SELECT {first} AS lo, {last} AS hi FROM points p)")
