"""`autogrid export`: historian rows to CSV (long or wide) with pandas.

Times are written in the site's zone when the config is given (UTC otherwise), and for a
simulated site on the simulation's clock: the demo records, next to the historian, when
each of its runs started on the wall clock and on the site clock (``<db>.clock.json``).
Values are rounded to the point's resolution (the template's scale), or else cleared of
binary float noise (231.10000000000002 -> 231.1).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.historian import QUALITY_NAME

if TYPE_CHECKING:
    import pandas as pd

    from gateway.config.models import SiteConfig

NOISE_DIGITS = 12  # significant digits kept where a point's resolution is not known


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"time '{text}' needs a UTC offset, e.g. {text}+00:00 or {text}Z")
    return dt.timestamp()


# -- the simulation's clock -------------------------------------------------------------

def clock_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".clock.json")


def record_sim_run(db_path: Path, site_now: float, speed: float,
                   wall_now: float | None = None) -> None:
    """Note that a simulation run starts now (wall and site clock), for the export."""
    path = clock_file(db_path)
    try:
        runs = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        runs = []
    runs.append({"wall": time.time() if wall_now is None else wall_now, "site": site_now,
                 "speed": speed})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs[-1000:]))


def to_site_clock(ts: pd.Series, db_path: Path) -> pd.Series:
    """Wall times of samples on the site clock of the simulation run they belong to."""
    path = clock_file(db_path)
    if not path.is_file():
        return ts
    try:
        runs = sorted(json.loads(path.read_text()), key=lambda r: r["wall"])
    except (OSError, ValueError, KeyError, TypeError):
        return ts
    out = ts.copy()
    for i, run in enumerate(runs):
        end = runs[i + 1]["wall"] if i + 1 < len(runs) else math.inf
        mask = (ts >= run["wall"]) & (ts < end)
        out[mask] = run["site"] + (ts[mask] - run["wall"]) * run["speed"]
    return out


# -- resolution ------------------------------------------------------------------------

def resolutions(cfg: SiteConfig) -> dict[tuple[str, str], float]:
    """(device, point) -> the smallest step the device reports, where the template fixes
    it (an integer register or object times its scale). Floats and SunSpec scale factors
    have none fixed, and are only cleared of float noise."""
    from drivers.template import load_template

    out: dict[tuple[str, str], float] = {}
    for dev in cfg.devices:
        try:
            tpl = load_template(dev.template)
        except Exception:  # an unknown template was reported by `check`; export anyway
            continue
        for name, spec in getattr(tpl, "points", {}).items():
            scale = getattr(spec, "scale", None)
            kind = str(getattr(spec, "type", "") or "")
            if not isinstance(scale, int | float) or scale <= 0 or "float" in kind or \
                    getattr(spec, "scale_factor", None) is not None or \
                    getattr(spec, "signal", None) is not None:
                continue
            out[(dev.id, name)] = float(scale)
    return out


def _decimals(step: float) -> int:
    return max(0, math.ceil(-math.log10(step) - 1e-9))


def _rounded(value: Any, step: float | None) -> Any:
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if step is not None:
        return round(value, _decimals(step))
    return float(f"{value:.{NOISE_DIGITS}g}")


# -- reading and writing ---------------------------------------------------------------

def read_history(db_path: Path, start: str | None = None, end: str | None = None,
                 devices: list[str] | None = None, cfg: SiteConfig | None = None
                 ) -> pd.DataFrame:
    """Samples as a long table: time, device, point, value, unit, quality; time in the
    site's zone (UTC without a config), on the simulation's clock for a simulated run."""
    import pandas as pd  # only here: the demo records its clock without loading pandas

    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no historian database here")
    uri = f"file:{db_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        compact = "history" in tables
        # integer milliseconds since the compact format; seconds (REAL) before it
        ts, scale = ("s.ts_ms", 1000.0) if compact else ("s.ts", 1.0)
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
        cond = " WHERE " + " AND ".join(where) if where else ""

        def part(table: str) -> str:
            return (f"SELECT {ts} AS ts, s.point_id AS pid, p.device, p.point, s.value, "
                    f"s.text, p.unit, s.quality FROM {table} s JOIN points p "
                    f"ON p.id = s.point_id{cond}")

        if not compact:
            sql = part("samples") + " ORDER BY s.ts"
        elif "history_stage" in tables:
            # the staged rows too; no key is in both tables (see gateway/historian_stage.py)
            sql = (f"SELECT * FROM ({part('history')} UNION ALL {part('history_stage')}) "
                   "ORDER BY ts, pid")
            args = args + args
        else:  # written before the stage existed
            sql = part("history") + " ORDER BY ts, pid"
        df = pd.read_sql_query(sql, db, params=args).drop(columns=["pid"])
    raw = df.pop("ts").astype(float)
    site_ts = to_site_clock(raw / 1000.0 if compact else raw, db_path)
    df["time"] = pd.Series(pd.to_datetime(site_ts, unit="s", utc=True),
                           index=df.index).dt.round("ms")
    if cfg is not None:
        from gateway.sitetime import zone

        df["time"] = df["time"].dt.tz_convert(zone(cfg.site.timezone))
    steps = resolutions(cfg) if cfg is not None else {}
    values = [_rounded(v, steps.get((d, p)))
              for v, d, p in zip(df["value"], df["device"], df["point"], strict=True)]
    df["value"] = pd.Series(values, index=df.index, dtype=object).where(
        df["text"].isna(), df["text"])
    df = df.drop(columns=["text"])
    df["quality"] = df["quality"].map(QUALITY_NAME)
    return df[["time", "device", "point", "value", "unit", "quality"]]


def export_csv(db_path: Path, out: TextIO, start: str | None = None, end: str | None = None,
               devices: list[str] | None = None, wide: bool = False,
               cfg: SiteConfig | None = None) -> int:
    """Write CSV to ``out``; wide = one column per device.point, forward-filled. Returns rows."""
    df = read_history(db_path, start, end, devices, cfg)
    if wide:
        df = df.assign(column=df["device"] + "." + df["point"])
        df = (df.pivot_table(index="time", columns="column", values="value", aggfunc="last")
              .ffill())
        df.to_csv(out)
    else:
        df.to_csv(out, index=False)
    return len(df)
