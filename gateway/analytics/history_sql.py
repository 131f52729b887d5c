"""The SQL the analytics read the historian with, shaped for its primary key.

The historian keys ``history`` by (point_id, ts_ms). The ``samples`` view computes
``ts = ts_ms / 1000.0``, which no index holds: a time bound on it reads a point's whole
history. These queries walk ``points`` first (CROSS JOIN fixes that order) and bound
``ts_ms`` itself, so each point is one range of the key. Bounds in seconds become the
integer milliseconds that select exactly the rows the view's ``ts`` comparison would.
A database still in the format before ``history`` (a ``samples`` table with REAL
seconds) is read the same way through that table.

The rows flushed since the last merge are in ``history_stage`` (no index, small): each
query adds them in one pass over it (points looked up by id), UNION ALL, as the view does;
no key is in both tables (gateway/historian_stage.py).
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
    stage: str | None = None  # the staged rows' table, in the same shape as ``table``

    @property
    def ts(self) -> str:
        """SQL of a sample's time in seconds (as the ``samples`` view gives it)."""
        return self.ts_of("h")

    def ts_of(self, alias: str) -> str:
        return (f"{alias}.{self.ts_col} / 1000.0" if self.scale == 1000.0
                else f"{alias}.{self.ts_col}")

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


COMPACT = Layout("history", "ts_ms", 1000.0, "history_stage")
UNSTAGED = Layout("history", "ts_ms", 1000.0)  # compact, written before the stage existed
OLD = Layout("samples", "ts", 1.0)


def layout(db: sqlite3.Connection) -> Layout:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "history" not in tables:
        return OLD
    return COMPACT if "history_stage" in tables else UNSTAGED


Args = list[str | float | int]


def _with_stage(lay: Layout, columns: str, where: str, args: Args, order: str
                ) -> tuple[str, Args]:
    """Rows of ``history`` (each point a key range: points first) and of the stage (one
    pass: the stage first, points by id), by ``order``. ``columns`` and ``where`` name the
    sample ``h`` and its point ``p``; ``{ts}`` in them is the time in seconds."""
    keyed = (f"SELECT {columns.format(ts=lay.ts)} FROM points p CROSS JOIN {lay.table} h "
             f"ON h.point_id = p.id WHERE {where.format(ts=lay.ts)}")
    if lay.stage is None:
        return f"{keyed} ORDER BY {order}", args
    staged = (f"SELECT {columns.replace('h.', 'st.').format(ts=lay.ts_of('st'))} FROM "
              f"{lay.stage} st CROSS JOIN points p ON p.id = st.point_id WHERE "
              f"{where.replace('h.', 'st.').format(ts=lay.ts_of('st'))}")
    return f"{keyed} UNION ALL {staged} ORDER BY {order}", args + args


def _good_samples(lay: Layout, label: str, fixed: str, fixed_value: str, among: list[str],
                  since_s: float | None) -> tuple[str, Args]:
    """Good samples (``label``, ts, value) where points.``fixed`` is ``fixed_value`` and the
    other of (device, point) is one of ``among``, by time."""
    where = (f"p.{fixed} = ? AND p.{label} IN ({','.join('?' * len(among))}) "
             "AND h.quality = 0")
    args: Args = [fixed_value, *among]
    if since_s is not None:
        where += f" AND h.{lay.ts_col} >= ?"
        args.append(lay.at_or_after(since_s))
    return _with_stage(lay, f"p.{label} AS {label}, {{ts}} AS ts, h.value AS value", where,
                       args, "ts")


def points_of_devices(lay: Layout, devices: list[str], point: str,
                      since_s: float | None) -> tuple[str, Args]:
    """Good samples (device, ts, value) of one point of several devices, by time."""
    return _good_samples(lay, "device", "point", point, devices, since_s)


def points_of_device(lay: Layout, device: str, points: list[str] | tuple[str, ...],
                     since_s: float | None) -> tuple[str, Args]:
    """Good samples (point, ts, value) of several points of one device, by time."""
    return _good_samples(lay, "point", "device", device, list(points), since_s)


def all_points_until(lay: Layout, until_s: float) -> tuple[str, Args]:
    """Every sample (device, point, ts, value, quality) up to ``until_s``, by time."""
    return _with_stage(lay, "p.device AS device, p.point AS point, {ts} AS ts, "
                            "h.value AS value, h.quality AS quality",
                       f"h.{lay.ts_col} <= ?", [lay.at_or_before(until_s)], "ts")


def span(lay: Layout) -> str:
    """First and last sample time in seconds: per point, the ends of its key range (and
    one pass over the stage)."""
    first = f"(SELECT MIN({lay.ts_col}) FROM {lay.table} WHERE point_id = p.id)"
    last = f"(SELECT MAX({lay.ts_col}) FROM {lay.table} WHERE point_id = p.id)"
    ends = f"SELECT {first} AS lo, {last} AS hi FROM points p"
    if lay.stage is not None:
        ends += f" UNION ALL SELECT MIN({lay.ts_col}), MAX({lay.ts_col}) FROM {lay.stage}"
    return f"SELECT MIN(lo) / {lay.scale}, MAX(hi) / {lay.scale} FROM ({ends})"
