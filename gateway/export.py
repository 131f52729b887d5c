"""`autogrid export`: historian rows to CSV (long or wide) with pandas."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TextIO

import pandas as pd

from gateway.historian import QUALITY_NAME


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"time '{text}' needs a UTC offset, e.g. {text}+00:00 or {text}Z")
    return dt.timestamp()


def read_history(db_path: Path, start: str | None = None, end: str | None = None,
                 devices: list[str] | None = None) -> pd.DataFrame:
    """Samples as a long table: time (UTC), device, point, value, unit, quality."""
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no historian database here")
    uri = f"file:{db_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        compact = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                             "name='history'").fetchone() is not None
        # integer milliseconds since the compact format; seconds (REAL) before it
        ts, table, scale = (("s.ts_ms", "history", 1000.0) if compact
                            else ("s.ts", "samples", 1.0))
        where: list[str] = []
        args: list[float | str] = []
        t0, t1 = _epoch(start), _epoch(end)
        if t0 is not None:
            where.append(f"{ts} >= ?")
            args.append(math.ceil(t0 * scale) if compact else t0)
        if t1 is not None:
            where.append(f"{ts} < ?")
            args.append(math.ceil(t1 * scale) if compact else t1)
        if devices:
            where.append(f"p.device IN ({','.join('?' * len(devices))})")
            args.extend(devices)
        sql = (f"SELECT {ts} AS ts, p.device, p.point, s.value, s.text, p.unit, s.quality "
               f"FROM {table} s JOIN points p ON p.id = s.point_id")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {ts}, s.point_id" if compact else " ORDER BY s.ts"
        df = pd.read_sql_query(sql, db, params=args)
    df["time"] = pd.to_datetime(df.pop("ts"), unit="ms" if compact else "s", utc=True)
    df["value"] = df["value"].astype(object).where(df["text"].isna(), df["text"])
    df = df.drop(columns=["text"])
    df["quality"] = df["quality"].map(QUALITY_NAME)
    return df[["time", "device", "point", "value", "unit", "quality"]]


def export_csv(db_path: Path, out: TextIO, start: str | None = None, end: str | None = None,
               devices: list[str] | None = None, wide: bool = False) -> int:
    """Write CSV to ``out``; wide = one column per device.point, forward-filled. Returns rows."""
    df = read_history(db_path, start, end, devices)
    if wide:
        df = df.assign(column=df["device"] + "." + df["point"])
        df = (df.pivot_table(index="time", columns="column", values="value", aggfunc="last")
              .ffill())
        df.to_csv(out)
    else:
        df.to_csv(out, index=False)
    return len(df)
