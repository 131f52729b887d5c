"""Model selection on a validation window, then one honest score on a later test window.

Each window is a rolling-origin backtest: every origin is a site-local midnight, the models
are refit on everything before it, and the day-ahead forecast for the following days sees
only data up to the origin (all features lag at least a day; the weather forecast is one
issued the day before). Every candidate (models, the same models with the weather forecast,
and the naive methods) is scored on the same rows. The candidate with the lowest
validation MAE is chosen, the naive methods included; the test window, which comes after,
is scored once and never used to choose anything. Skill is always quoted against the
strongest naive method on the scored data.
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
class Window:
    """One rolling-origin backtest: every candidate's forecast on the same rows."""

    target: str
    index: pd.DatetimeIndex
    actual: np.ndarray
    preds: dict[str, np.ndarray]
    fold: np.ndarray  # fold number of each row

    def mae(self, name: str) -> float:
        return mae(self.actual, self.preds[name])

    def strongest_naive(self) -> str:
        return min((k for k in self.preds if k in models.NAIVE), key=self.mae)

    def table(self) -> pd.DataFrame:
        """MAE, nMAE and skill against the strongest naive method on this window."""
        denom = max(float(np.mean(np.abs(self.actual))), 1e-9)
        ref = self.mae(self.strongest_naive())
        rows = [{"model": models.KIND_NAMES[k], "mae_kw": self.mae(k),
                 "nmae_pct": 100.0 * self.mae(k) / denom,
                 "skill_pct": 100.0 * (1.0 - self.mae(k) / ref) if ref > 0 else float("nan")}
                for k in self.preds]
        return pd.DataFrame(rows).set_index("model")


@dataclass
class BacktestResult:
    """Selection on ``validation``, the chosen candidate's bands, the ``test`` score."""

    target: str
    validation: Window
    test: Window | None
    best: str  # chosen on validation (may be a naive method)
    fallback: str  # the best candidate that needs no weather forecast
    resid_q: np.ndarray = field(default_factory=lambda: np.zeros((24, 2)))
    coverage: float = float("nan")  # share of test actuals inside the p10..p90 band
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def scored(self) -> Window:
        """The window the metrics describe: the test window when there is one."""
        return self.test if self.test is not None else self.validation

    @property
    def note(self) -> str:
        """Why the chosen candidate is what it is, in one line (empty when a model won)."""
        if self.best in models.NAIVE:
            return (f"no model beat {self.best} on the validation window: the forecast falls "
                    f"back to it")
        return ""


def mae(a: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(a - p))) if len(a) else float("nan")


def hour_quantiles(hours: np.ndarray, resid: np.ndarray, q: tuple[float, float] = (0.1, 0.9)
                   ) -> np.ndarray:
    """(24, 2) residual quantiles per local hour; hours with no data get 0."""
    out = np.zeros((24, 2))
    for h in range(24):
        r = resid[hours == h]
        if len(r):
            out[h] = np.quantile(r, q)
    return out


def folds(last: pd.Timestamp, days: int, retrain_days: int
          ) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(start, end) of each fold over the ``days`` local days before local midnight ``last``."""
    first = last - pd.Timedelta(days=days)
    out = []
    t = first
    while t < last:
        end = min(t + pd.Timedelta(days=retrain_days), last)
        out.append((t.tz_convert("UTC"), end.tz_convert("UTC")))
        t = end
    return out


def candidates(target: str, weather: bool, kinds: tuple[str, ...] = models.KINDS
               ) -> tuple[str, ...]:
    ens = tuple(k for k, m in models.ENSEMBLE.items() if set(m) <= set(kinds))
    own = (*kinds, *ens)
    wx = tuple(f"{k}_wx" for k in own) if weather and models.WX_COLS.get(target) else ()
    return (*own, *wx, *models.naive_names(target))


def has_weather(frame: pd.DataFrame, target: str) -> bool:
    cols = {"pv": "ghi_fc_w_m2", "load": "temp_fc_c"}
    return target in cols and cols[target] in frame and bool(frame[cols[target]].notna().any())


def rolling_origin(frame: pd.DataFrame, info: SiteInfo, target: str, days: int,
                   retrain_days: int, kinds: tuple[str, ...], end: pd.Timestamp,
                   n_trees: int = 100, n_jobs: int = 1, tick: Tick | None = None) -> Window:
    """Backtest ``kinds`` on ``target`` over the ``days`` local days before ``end``."""
    y = frame[f"{target}_kw"].astype(float)
    wx = frame[[c for c in ("ghi_fc_w_m2", "temp_fc_c") if c in frame]]
    feats = models.complete(features.build(y, target, info, wx=wx))
    idx = pd.DatetimeIndex(frame.index)
    fl = folds(end, days, retrain_days)
    if not fl or fl[0][0] <= idx[0] + pd.Timedelta(days=2):
        raise ValueError(f"{target}: {len(idx) / 96:.1f} days of history is too short for "
                         f"this backtest (it starts {fl[0][0] if fl else end:%Y-%m-%d}, which "
                         f"needs 3 days of history before it)")
    preds: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    rows: list[np.ndarray] = []
    fold_no: list[np.ndarray] = []
    for i, (t0, t1) in enumerate(fl):
        train = idx < t0
        test = (idx >= t0) & (idx < t1)
        for k in kinds:
            if models.members(k):  # the mean of its members' forecasts, not refitted
                continue
            m, cols = models.fit(k, target, feats[train], y[train], n_trees, n_jobs)
            preds[k].append(models.predict(m, cols, feats[test], target))
            if tick and k not in models.NAIVE:
                tick()
        for k in kinds:
            if models.members(k):
                preds[k].append(np.mean([preds[m][-1] for m in models.members(k)], axis=0))
        rows.append(np.flatnonzero(test))
        fold_no.append(np.full(int(test.sum()), i))
    sel = np.concatenate(rows)
    out = {k: np.concatenate(v) for k, v in preds.items()}
    actual = y.to_numpy()[sel]
    ok = np.isfinite(actual) & np.all([np.isfinite(v) for v in out.values()], axis=0)
    return Window(target, idx[sel][ok], actual[ok], {k: v[ok] for k, v in out.items()},
                  np.concatenate(fold_no)[ok])


def evaluate(frame: pd.DataFrame, info: SiteInfo, target: str, val_days: int = 14,
             test_days: int = 0, retrain_days: int = 7, kinds: tuple[str, ...] = models.KINDS,
             n_trees: int = 100, n_jobs: int = 1, tick: Tick | None = None) -> BacktestResult:
    """Choose on the validation window, then (``test_days`` > 0) score once on the test window.

    The test window is the last ``test_days`` whole local days; validation the
    ``val_days`` before it.
    """
    idx = pd.DatetimeIndex(frame.index)
    last = idx[-1].tz_convert(info.timezone).normalize()  # the last partial day is left out
    val_end = last - pd.Timedelta(days=test_days)
    cands = candidates(target, has_weather(frame, target), kinds)
    val = rolling_origin(frame, info, target, val_days, retrain_days, cands, val_end,
                         n_trees, n_jobs, tick)
    best = min(cands, key=val.mae)
    fallback = min((k for k in cands if not models.uses_weather(k)), key=val.mae)
    hours = val.index.tz_convert(info.timezone).hour.to_numpy()
    resid_q = hour_quantiles(hours, val.actual - val.preds[best])
    test = (rolling_origin(frame, info, target, test_days, retrain_days, cands, last,
                           n_trees, n_jobs, tick) if test_days > 0 else None)
    res = BacktestResult(target, val, test, best, fallback, resid_q)
    res.metrics = _metrics(res)
    res.coverage = _coverage(res.scored, best, resid_q, info) if test is not None else (
        _cross_coverage(val, best, info))
    return res


def _metrics(res: BacktestResult) -> pd.DataFrame:
    """The scored window's table plus each candidate's validation nMAE and the choice."""
    m = res.scored.table()
    if res.test is not None:
        m["val_nmae_pct"] = res.validation.table()["nmae_pct"]
    m["chosen"] = ["<- chosen" if n == models.KIND_NAMES[res.best] else
                   ("<- fallback" if n == models.KIND_NAMES[res.fallback] else "")
                   for n in m.index]
    return m


def _coverage(w: Window, best: str, q: np.ndarray, info: SiteInfo) -> float:
    hours = w.index.tz_convert(info.timezone).hour.to_numpy()
    p = w.preds[best]
    inside = (w.actual >= p + q[hours, 0] - 1e-9) & (w.actual <= p + q[hours, 1] + 1e-9)
    return float(inside.mean()) if len(inside) else float("nan")


def _cross_coverage(w: Window, best: str, info: SiteInfo) -> float:
    """Without a test window: each fold's coverage with bands from the other folds."""
    hours = w.index.tz_convert(info.timezone).hour.to_numpy()
    resid = w.actual - w.preds[best]
    inside = np.zeros(len(resid), dtype=bool)
    for f in np.unique(w.fold):
        this = w.fold == f
        q = hour_quantiles(hours[~this], resid[~this]) if (~this).any() else hour_quantiles(
            hours, resid)
        inside[this] = (resid[this] >= q[hours[this], 0] - 1e-9) & (
            resid[this] <= q[hours[this], 1] + 1e-9)
    return float(inside.mean()) if len(resid) else float("nan")
