"""The anomaly detectors in the daemon: telemetry from the historian, a baseline, alarms.

``historian_telemetry`` turns the historian's change records into per-device frames on a
regular grid (a value holds until the next change; an OFFLINE record ends it). The job
``detect_job`` runs in a worker thread: it fits ``AnomalyModel`` on the baseline span
(what normal looks like) once, then checks the span after it. ``AlarmBridge`` is the only
coupling to site control: each anomaly becomes a warning alarm from source
``analytics/<detector>`` (condition ``<device>:<signal>``), cleared when no longer reported.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from gateway.analytics import history_sql
from gateway.analytics.anomaly import Anomaly, AnomalyModel, Telemetry
from gateway.analytics.site import SiteInfo

log = logging.getLogger("autogrid.analytics")
ALARM_PREFIX = "analytics/"


def historian_span(db_path: Path) -> tuple[float, float] | None:
    """First and last sample time in the historian (None when it holds nothing)."""
    if not db_path.is_file():
        return None
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        lo, hi = db.execute(history_sql.span(history_sql.layout(db))).fetchone()
    return None if lo is None else (float(lo), float(hi))


def historian_telemetry(db_path: Path, since_s: float, until_s: float, step_s: float
                        ) -> Telemetry:
    """Every device's numeric points on a ``step_s`` grid over [since, until] (UTC index).

    The historian stores changes only, so a frozen value leaves no rows: it is held up to
    ``until_s``. A non-good record (device offline) makes the value unknown until the next
    good one; grid rows with any unknown point are dropped.
    """
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        sql, args = history_sql.all_points_until(history_sql.layout(db), until_s)
        rows = pd.read_sql_query(sql, db, params=args)
    if rows.empty:
        return {}
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows.loc[rows["quality"] != 0, "value"] = float("nan")
    grid = pd.date_range(pd.to_datetime(since_s, unit="s", utc=True),
                         pd.to_datetime(until_s, unit="s", utc=True),
                         freq=pd.Timedelta(seconds=step_s))
    out: Telemetry = {}
    for dev, g in rows.groupby("device"):
        cols: dict[str, pd.Series] = {}
        for point, p in g.groupby("point"):
            t = pd.to_datetime(p["ts"].to_numpy(), unit="s", utc=True)
            s = pd.Series(p["value"].to_numpy(dtype=float), index=t)
            s = s[~s.index.duplicated(keep="last")]
            if s.notna().any():
                cols[str(point)] = s.reindex(grid, method="ffill")  # carries NaN (offline)
        frame = pd.DataFrame(cols, index=grid).dropna()
        if len(frame):
            out[str(dev)] = frame
    return out


@dataclass
class Detection:
    """One run's outcome: what the detectors report now, over which span."""

    anomalies: list[Anomaly]
    baseline: tuple[float, float]
    checked: tuple[float, float] | None  # None: nothing after the baseline yet
    devices: int


def detect_job(db_path: Path, info: SiteInfo, baseline: tuple[float, float],
               until_s: float, window_s: float, step_s: float, forest_trees: int,
               fitted: tuple[tuple[float, float], AnomalyModel] | None
               ) -> tuple[Detection, tuple[tuple[float, float], AnomalyModel]]:
    """Worker thread: fit on the baseline (unless fitted on it already), check after it."""
    if fitted is None or fitted[0] != baseline:
        tel = historian_telemetry(db_path, baseline[0], baseline[1], step_s)
        model = _robust(AnomalyModel(info, forest_trees)).fit(tel, pd.DataFrame())
        fitted = (baseline, model)
    start = max(baseline[1], until_s - window_s)
    if until_s - start < 2 * step_s:
        return Detection([], baseline, None, 0), fitted
    tel = historian_telemetry(db_path, start, until_s, step_s)
    found = fitted[1].detect(tel, pd.DataFrame())
    return Detection(found, baseline, (start, until_s), len(tel)), fitted


def _robust(model: AnomalyModel) -> AnomalyModel:
    """A detector that cannot use this site's telemetry (too little, a missing column) is
    skipped with a log line instead of failing the whole run."""
    model.detectors = [_Guard(d) for d in model.detectors]
    return model


class _Guard:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.ok = True

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        try:
            self.inner.fit(tel, ctx)
        except Exception as exc:  # one detector must not stop the others
            self.ok = False
            log.info("detector %s not used: %s: %s", self.name, type(exc).__name__, exc)

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        if not self.ok:
            return []
        try:
            out: list[Anomaly] = self.inner.detect(tel, ctx)
            return out
        except Exception as exc:
            log.warning("detector %s failed: %s: %s", self.name, type(exc).__name__, exc)
            return []


class AlarmStore(Protocol):
    """What the bridge needs of gateway.control.alarms.ControlStore."""

    alarms: dict[str, Any]

    def raise_(self, source: str, condition: str, severity: str, message: str,
               now: float | None = None) -> Any: ...

    def clear(self, source: str, condition: str, now: float | None = None) -> bool: ...


def worst_per_signal(found: list[Anomaly]) -> dict[tuple[str, str, str], Anomaly]:
    """(detector, device, signal) -> its highest-scoring anomaly."""
    out: dict[tuple[str, str, str], Anomaly] = {}
    for a in found:
        k = (a.detector, a.device, a.signal)
        if k not in out or a.score > out[k].score:
            out[k] = a
    return out


def alarm_message(a: Anomaly) -> str:
    return (f"{a.device} {a.signal}: {a.explanation} (score {a.score:.2f}, "
            f"detector {a.detector}, at {a.ts})")


class AlarmBridge:
    """Anomalies -> control alarms; each run is the full current set, so the rest clear."""

    def __init__(self, store: AlarmStore) -> None:
        self.store = store

    def sync(self, current: list[Anomaly], detectors: set[str] | None = None) -> None:
        """Raise every current anomaly; clear analytics alarms not reported any more (only
        those of ``detectors`` when given: a detector that did not run says nothing)."""
        keep: set[str] = set()
        for (det, dev, sig), a in worst_per_signal(current).items():
            src = ALARM_PREFIX + det
            self.store.raise_(src, f"{dev}:{sig}", "warning", alarm_message(a))
            keep.add(f"{src}:{dev}:{sig}")
        for key, alarm in list(self.store.alarms.items()):
            src = str(alarm.source)
            if not src.startswith(ALARM_PREFIX) or key in keep or not alarm.active:
                continue
            if detectors is not None and src[len(ALARM_PREFIX):] not in detectors:
                continue
            self.store.clear(src, key[len(src) + 1:])
