"""Forecaster: the chosen model per target, its bands, and ``predict`` for the scheduler.

``train`` backtests every candidate (models, models with the weather forecast, naive
methods) on a validation window, keeps the best per target (a naive method when no model
beats it), takes its out-of-sample residual quantiles per local hour as the p10/p90 band,
and refits it on the whole history. A weather-driven choice keeps the best candidate
without weather as its fallback for when the forecast feed is missing or stale.
``predict(start, horizon, step)`` returns, per target, a frame of p50/p10/p90 in kW;
beyond a day ahead the forecast feeds itself as history. PV's first 6 h come from the
intraday model (the latest measured clear-sky index, gateway.analytics.intraday), so keep
``history`` current with ``observe``.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gateway.analytics import backtest, features, intraday, models
from gateway.analytics.data import STEP, local_days
from gateway.analytics.site import SiteInfo

HISTORY_KEEP = pd.Timedelta(days=15)
INTRADAY_TAU_S = 7200.0  # how fast the latest observed error fades out of a forecast
FORMAT = 4  # 4: intraday PV is a blend of index models (3: load over its weekly level)
DAY_AHEAD = pd.Timedelta(hours=24)


@dataclass
class TargetModel:
    target: str
    kind: str
    estimator: Any
    cols: list[str]
    resid_q: np.ndarray  # (24, 2): p10, p90 residual per local hour
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    coverage: float = float("nan")
    fallback: TargetModel | None = None  # used when the weather forecast is not there
    note: str = ""  # why this kind (e.g. a naive method, nothing beat it on validation)


@dataclass
class Forecaster:
    info: SiteInfo
    models: dict[str, TargetModel]
    history: pd.DataFrame  # recent 15-minute targets ({target}_kw), UTC index
    version: int = 1
    trained_at: float = 0.0
    window: tuple[str, str] = ("", "")  # training data start, end (ISO, UTC)
    notes: dict[str, str] = field(default_factory=dict)  # per target, from the last predict
    # PV for the next 6 h from the latest measurements (gateway.analytics.intraday)
    intraday_pv: intraday.IntradayModel | None = None
    # the day-ahead weather forecast when predict is given none (the daemon's feed); not saved
    weather_source: Callable[[], pd.DataFrame | None] | None = field(default=None, repr=False)

    @property
    def targets(self) -> list[str]:
        return list(self.models)

    def observe(self, frame: pd.DataFrame) -> None:
        """Add newer observations (same columns); keeps the last 15 days."""
        h = pd.concat([self.history, frame])
        h = h[~h.index.duplicated(keep="last")].sort_index()
        self.history = h[h.index >= h.index[-1] - HISTORY_KEEP]

    def predict(self, start: pd.Timestamp | None = None,
                horizon: pd.Timedelta = DAY_AHEAD,
                step: pd.Timedelta = STEP, targets: list[str] | None = None,
                intraday: bool = True, weather: pd.DataFrame | None = None
                ) -> dict[str, pd.DataFrame]:
        """Per target: DataFrame(index = UTC step starts, columns p50, p10, p90) in kW.

        start defaults to the quarter after the last observation. With ``intraday`` the
        error of the last observed hour is carried into the first hours (fading, 2 h).
        ``weather``: day-ahead forecast at 15 minutes (``ghi_fc_w_m2``, ``temp_fc_c``); a
        model that needs it and does not get it for the whole horizon gives way to its
        fallback, and ``notes`` says so.
        """
        source = getattr(self, "weather_source", None)
        if weather is None and source is not None:
            weather = source()
        history = self.history  # one frame throughout: observe() may swap it meanwhile
        last = history.index[-1]
        t0 = pd.Timestamp(start).tz_convert("UTC") if start is not None else last + STEP
        t0 = t0.floor(STEP)
        end = t0 + pd.Timedelta(horizon)
        out: dict[str, pd.DataFrame] = {}
        self.notes = {}
        for tg in targets or self.targets:
            tm = self.models[tg]
            if models.uses_weather(tm.kind) and not _covers(weather, tg, last + STEP, end):
                fb = tm.fallback
                self.notes[tg] = (f"no weather forecast up to {end:%Y-%m-%d %H:%M} UTC: "
                                  f"{models.KIND_NAMES[fb.kind] if fb else 'nothing'} instead "
                                  f"of {models.KIND_NAMES[tm.kind]}")
                if fb is None:
                    continue
                tm = fb
            elif tm.note:
                self.notes[tg] = tm.note
            q = self._predict_quarters(tm, history, t0, end, intraday, weather)
            out[tg] = _resample(q, t0, end, pd.Timedelta(step))
        return out

    def _predict_quarters(self, tm: TargetModel, history: pd.DataFrame, t0: pd.Timestamp,
                          end: pd.Timestamp, intraday: bool, weather: pd.DataFrame | None
                          ) -> pd.DataFrame:
        col = f"{tm.target}_kw"
        hist = history[col].astype(float)
        last = history.index[-1]
        # at least a day ahead: PV's own clear-day shape (env_kt) reads today's whole row
        # set, so a horizon that ended before the evening came out as all zeros
        future = pd.date_range(last + STEP, max(end, last + DAY_AHEAD + STEP), freq=STEP,
                               inclusive="left")
        y = pd.concat([hist, pd.Series(np.nan, index=future)])
        fitted = np.full(len(y), np.nan)
        cs = features.clear_sky_pv(pd.DatetimeIndex(y.index), self.info) if (
            tm.target == "pv") else None
        todo = np.isnan(y.to_numpy())
        todo[: len(hist)] = False
        first = True
        while todo.any():
            f = models.complete(features.build(y, tm.target, self.info, cs, weather))
            p = models.predict(tm.estimator, tm.cols, f, tm.target)
            if first:
                fitted = p.copy()
                first = False
            now = todo & np.isfinite(p)
            if not now.any():  # no history to go on: hold the last known day
                y.iloc[np.flatnonzero(todo)] = 0.0
                break
            vals = y.to_numpy().copy()
            vals[now] = p[now]
            y = pd.Series(vals, index=y.index)
            todo &= ~now
        p50 = y.copy()
        near = getattr(self, "intraday_pv", None)  # older saved models have none
        if intraday and len(hist) and tm.target == "pv" and near is not None and cs is not None:
            p50 = self._intraday_pv(near, y, cs, len(hist) - 1, weather)
        elif intraday and len(hist):
            recent = slice(max(0, len(hist) - 4), len(hist))
            err = hist.to_numpy()[recent] - fitted[recent]
            e0 = float(np.nanmean(err)) if np.isfinite(err).any() else 0.0
            dt = (pd.DatetimeIndex(y.index) - last).total_seconds().to_numpy()
            boost = np.where(dt > 0, e0 * np.exp(-dt / INTRADAY_TAU_S), 0.0)
            if tm.target == "pv" and cs is not None:
                boost = np.where(cs > 0, boost, 0.0)
            p50 = p50 + boost
        sel = (y.index >= t0) & (y.index < end)
        idx = pd.DatetimeIndex(y.index[sel])
        mid = p50.to_numpy()[sel].clip(min=0.0)
        hours = idx.tz_convert(self.info.timezone).hour.to_numpy()
        lo = (mid + tm.resid_q[hours, 0]).clip(min=0.0)
        hi = (mid + tm.resid_q[hours, 1]).clip(min=0.0)
        if tm.target == "pv":
            cap = sum(a.p_rated_kw for a in self.info.pv)
            night = (cs if cs is not None else np.ones(len(y)))[sel] <= 0
            mid, lo, hi = (np.where(night, 0.0, np.minimum(v, cap)) for v in (mid, lo, hi))
        return pd.DataFrame({"p50": mid, "p10": np.minimum(lo, mid), "p90": np.maximum(hi, mid)},
                            index=idx)

    def _intraday_pv(self, near: intraday.IntradayModel, y: pd.Series, cs: np.ndarray,
                     origin: int, weather: pd.DataFrame | None) -> pd.Series:
        """The day-ahead PV with its first 6 h replaced by the intraday forecast from the
        latest measurements (where the sun is high enough to read a clear-sky index)."""
        idx = pd.DatetimeIndex(y.index)
        pv = y.to_numpy(dtype=float).copy()
        pv[origin + 1:] = np.nan
        pv_fc = None
        if weather is not None and "ghi_fc_w_m2" in weather:
            pv_fc = features.weather_features(idx, "pv", self.info, weather, cs)["pv_phys"]
        near_kw = near.predict(pv, cs, local_days(idx, self.info.timezone), pv_fc, origin)
        out = y.to_numpy(dtype=float).copy()
        span = out[origin + 1:origin + 1 + intraday.LEADS]
        ok = np.isfinite(near_kw[:len(span)])
        span[ok] = near_kw[:len(span)][ok]
        return pd.Series(out, index=y.index)

    # -- persistence -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["weather_source"] = None  # a live feed belongs to the daemon, not the file
        return state

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "trained_at": self.trained_at,
                "window": list(self.window), "format": FORMAT,
                "models": {t: {"kind": models.KIND_NAMES[m.kind], "coverage_p10_p90":
                               m.coverage, "metrics": m.metrics, "note": m.note,
                               "fallback": models.KIND_NAMES[m.fallback.kind] if m.fallback
                               else None} for t, m in self.models.items()},
                "intraday_pv": near.describe() if (near := getattr(self, "intraday_pv", None))
                else None}

    def save(self, directory: Path) -> Path:
        """Write forecast-v{version}.pkl (atomically) and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"forecast-v{self.version}.pkl"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump({"format": FORMAT, "forecaster": self}, fh)
        tmp.replace(path)
        return path

    @staticmethod
    def load_latest(directory: Path) -> Forecaster | None:
        """The highest saved version in ``directory`` that loads, or None."""
        found = sorted(directory.glob("forecast-v*.pkl"),
                       key=lambda p: int(p.stem.split("-v")[-1]), reverse=True)
        for path in found:
            try:
                with open(path, "rb") as fh:
                    blob = pickle.load(fh)  # our own files, written by save()
                if blob.get("format") == FORMAT:
                    fc: Forecaster = blob["forecaster"]
                    return fc
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError, KeyError):
                continue
        return None


def _resample(q: pd.DataFrame, t0: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta
              ) -> pd.DataFrame:
    if step == STEP:
        return q
    if step > STEP:
        return q.resample(step, origin=t0).mean()
    fine = pd.date_range(t0, end, freq=step, inclusive="left")
    return q.reindex(q.index.union(fine)).interpolate(method="time").ffill().reindex(fine)


def _covers(weather: pd.DataFrame | None, target: str, t0: pd.Timestamp,
            end: pd.Timestamp) -> bool:
    col = {"pv": "ghi_fc_w_m2", "load": "temp_fc_c"}.get(target)
    if weather is None or col is None or col not in weather:
        return False
    need = pd.date_range(t0, end, freq=STEP, inclusive="left")
    return bool(weather[col].reindex(need).notna().all())


def train(frame: pd.DataFrame, info: SiteInfo, version: int = 1, n_trees: int = 100,
          n_jobs: int = 1, backtest_days: int = 14, retrain_days: int = 7,
          tick: Callable[[], None] | None = None,
          results: dict[str, backtest.BacktestResult] | None = None,
          test_days: int = 0) -> Forecaster:
    """Choose per target on a ``backtest_days`` validation window, refit on all of ``frame``.

    ``test_days`` > 0 scores the choice once on the last days (which validation does not
    see); the daemon leaves it at 0 and reports validation figures.
    """
    targets = [t for t in info.targets if f"{t}_kw" in frame]
    need = backtest_days + test_days + 3
    if not targets or len(frame) < 96 * need:
        raise ValueError(f"training needs {need} days of 15-minute history, "
                         f"found {len(frame) / 96:.1f} days")
    out: dict[str, TargetModel] = {}
    wx = frame[[c for c in ("ghi_fc_w_m2", "temp_fc_c") if c in frame]]
    for tg in targets:
        res = backtest.evaluate(frame, info, tg, backtest_days, test_days, retrain_days,
                                n_trees=n_trees, n_jobs=n_jobs, tick=tick)
        if results is not None:
            results[tg] = res
        y = frame[f"{tg}_kw"].astype(float)
        feats = models.complete(features.build(y, tg, info, wx=wx))
        metrics = {str(k): {str(c): (v if isinstance(v, str) else float(v))
                            for c, v in row.items()}
                   for k, row in res.metrics.to_dict(orient="index").items()}

        est, cols = models.fit(res.best, tg, feats, y, n_trees, n_jobs)
        tm = TargetModel(tg, res.best, est, cols, res.resid_q, metrics, res.coverage,
                         note=res.note)
        if models.uses_weather(res.best):
            val = res.validation
            hours = val.index.tz_convert(info.timezone).hour.to_numpy()
            est, cols = models.fit(res.fallback, tg, feats, y, n_trees, n_jobs)
            tm.fallback = TargetModel(tg, res.fallback, est, cols, backtest.hour_quantiles(
                hours, val.actual - val.preds[res.fallback]), metrics, res.coverage)
        if tick:
            tick()
        out[tg] = tm
    idx = pd.DatetimeIndex(frame.index)
    hist = frame[[f"{t}_kw" for t in targets]]
    fc = Forecaster(info, out, hist[hist.index >= idx[-1] - HISTORY_KEEP], version,
                    time.time(), (idx[0].isoformat(), (idx[-1] + STEP).isoformat()))
    if "pv" in targets:
        fc.intraday_pv = intraday.fit(frame, info)
    return fc
