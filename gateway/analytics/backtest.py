"""Rolling-origin backtest: retrain on everything before each fold, forecast the fold's days.

Each origin is a site-local midnight: the day-ahead forecast for that day sees only data up
to the origin (all features lag at least a day). Every model kind and the reference
forecasts (seasonal naive; clear-sky-scaled persistence for PV) are scored on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gateway.analytics import features, models
from gateway.analytics.site import SiteInfo

Tick = Callable[[], None]


@dataclass
class BacktestResult:
    target: str
    index: pd.DatetimeIndex
    actual: np.ndarray
    preds: dict[str, np.ndarray]
    fold: np.ndarray  # fold number of each row
    baseline: str
    best: str = ""
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    resid_q: np.ndarray = field(default_factory=lambda: np.zeros((24, 2)))
    coverage: float = float("nan")  # share of actuals inside the p10..p90 band (out of fold)


def mae(a: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(a - p)))


def hour_quantiles(hours: np.ndarray, resid: np.ndarray, q: tuple[float, float] = (0.1, 0.9)
                   ) -> np.ndarray:
    """(24, 2) residual quantiles per local hour; hours with no data get 0."""
    out = np.zeros((24, 2))
    for h in range(24):
        r = resid[hours == h]
        if len(r):
            out[h] = np.quantile(r, q)
    return out


def folds(index: pd.DatetimeIndex, tz: str, days: int, retrain_days: int
          ) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(start, end) of each fold over the last ``days`` whole local days of ``index``."""
    last = index[-1].tz_convert(tz).normalize()  # the last (maybe partial) day is left out
    first = last - pd.Timedelta(days=days)
    out = []
    t = first
    while t < last:
        end = min(t + pd.Timedelta(days=retrain_days), last)
        out.append((t.tz_convert("UTC"), end.tz_convert("UTC")))
        t = end
    return out


def rolling_origin(frame: pd.DataFrame, info: SiteInfo, target: str, days: int = 28,
                   retrain_days: int = 7, kinds: tuple[str, ...] = models.KINDS,
                   n_trees: int = 100, n_jobs: int = 1, tick: Tick | None = None
                   ) -> BacktestResult:
    """Backtest ``target`` (column ``{target}_kw`` of ``frame``) over its last ``days`` days."""
    y = frame[f"{target}_kw"].astype(float)
    feats = models.complete(features.build(y, target, info))
    idx = pd.DatetimeIndex(frame.index)
    fl = folds(idx, info.timezone, days, retrain_days)
    if not fl or fl[0][0] <= idx[0] + pd.Timedelta(days=2):
        raise ValueError(f"{target}: {len(idx) / 96:.1f} days of history is too short for a "
                         f"{days}-day backtest (need at least {days + 3} days)")
    preds: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    rows: list[np.ndarray] = []
    fold_no: list[np.ndarray] = []
    for i, (t0, t1) in enumerate(fl):
        train = idx < t0
        test = (idx >= t0) & (idx < t1)
        for k in kinds:
            m, cols = models.fit(k, target, feats[train], y[train], n_trees, n_jobs)
            preds[k].append(models.predict(m, cols, feats[test], target))
            if tick:
                tick()
        rows.append(np.flatnonzero(test))
        fold_no.append(np.full(int(test.sum()), i))
    sel = np.concatenate(rows)
    out = {k: np.concatenate(v) for k, v in preds.items()}
    for name, b in features.baselines(feats.iloc[sel], target).items():
        out[name] = np.maximum(b, 0.0)
    actual = y.to_numpy()[sel]
    ok = np.isfinite(actual) & np.all([np.isfinite(v) for v in out.values()], axis=0)
    res = BacktestResult(target, idx[sel][ok], actual[ok], {k: v[ok] for k, v in out.items()},
                         np.concatenate(fold_no)[ok], features.SEASONAL_NAIVE[target])
    score(res, kinds, info)
    return res


def score(res: BacktestResult, kinds: tuple[str, ...], info: SiteInfo) -> None:
    """Metrics table, best model kind, hour-of-day residual quantiles and band coverage."""
    a = res.actual
    denom = max(float(np.mean(np.abs(a))), 1e-9)
    base = mae(a, res.preds[res.baseline])
    ref = "cs_persistence" if "cs_persistence" in res.preds else None
    rows = []
    for name, p in res.preds.items():
        m = mae(a, p)
        row = {"model": models.KIND_NAMES.get(name, name), "mae_kw": m,
               "nmae_pct": 100.0 * m / denom, "skill_vs_seasonal_naive_pct":
               100.0 * (1.0 - m / base) if base > 0 else float("nan")}
        if ref:
            r = mae(a, res.preds[ref])
            row["skill_vs_cs_persistence_pct"] = 100.0 * (1.0 - m / r) if r > 0 else float("nan")
        rows.append(row)
    res.metrics = pd.DataFrame(rows).set_index("model")
    res.best = min(kinds, key=lambda k: mae(a, res.preds[k]))
    hours = res.index.tz_convert(info.timezone).hour.to_numpy()
    resid = a - res.preds[res.best]
    res.resid_q = hour_quantiles(hours, resid)
    inside = np.zeros(len(a), dtype=bool)
    for f in np.unique(res.fold):  # bands from the other folds: an honest coverage
        other = res.fold != f
        this = ~other
        q = hour_quantiles(hours[other], resid[other]) if other.any() else res.resid_q
        lo = res.preds[res.best][this] + q[hours[this], 0]
        hi = res.preds[res.best][this] + q[hours[this], 1]
        inside[this] = (a[this] >= lo - 1e-9) & (a[this] <= hi + 1e-9)
    res.coverage = float(inside.mean()) if len(a) else float("nan")
