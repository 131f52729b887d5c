"""Forecast candidates per target: Random Forest, Linear Regression (scikit-learn), each
with and without a weather-forecast input, and the naive methods they must beat.

A naive method is a candidate like any model (an estimator that copies one feature), so
when none of the models beats it on the validation window the forecaster uses it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

KINDS = ("rf", "lr")
WX_KINDS = ("rf_wx", "lr_wx")  # the same models with the day-ahead weather forecast
NAIVE = {"seasonal_naive_1d": "lag_1d", "seasonal_naive_7d": "lag_7d",
         "cs_persistence": "cs_kt"}  # name -> the feature it copies
# The mean of the forest and the linear model: their errors differ (a forest cannot
# extrapolate, a linear model cannot bend), so their average is often better than either
# (forecast combination); a candidate like any other, so validation decides.
ENSEMBLE = {"avg": ("rf", "lr")}
KIND_NAMES = {"rf": "random_forest", "lr": "linear_regression",
              "rf_wx": "random_forest+weather", "lr_wx": "linear_regression+weather",
              "avg": "mean_rf_lr", "avg_wx": "mean_rf_lr+weather",
              **{k: k for k in NAIVE}}
_RF_BASE = ["qh", "dow", "daytype", "holiday", "hour_sin", "hour_cos", "doy_sin", "doy_cos",
            "lag_1d", "lag_2d", "lag_7d", "mean_1d", "mean_7d"]
_PV = ["cs", "kt_1d", "kt_2d", "cs_kt", "cs_kt2", "env", "env_kt"]
_LR_PV = ["cs", "cs_kt", "cs_kt2", "lag_1d", "env", "env_kt"]
WX_COLS = {"pv": ["kt_fc", "pv_fc", "pv_phys"],
           "load": ["temp_fc", "hdd_fc", "hdd_fc_day", "hdd_delta"], "wind": []}
_ONEHOT = re.compile(r"h\d+_d\d")  # hour x day type columns of features.calendar
REQUIRED = ["lag_1d", "mean_1d"]  # a row is predictable once these are known
_FALLBACK = {"lag_2d": "lag_1d", "lag_7d": "lag_1d", "mean_7d": "mean_1d", "kt_2d": "kt_1d",
             "cs_kt2": "cs_kt", "level_7d": "mean_1d"}
# Load models learn the load relative to the last week's level (features.build level_7d):
# consumers added or removed scale the whole profile, which a tree cannot extrapolate to
# and fixed profile coefficients miss; these kW inputs are scaled with it.
_LEVEL = "level_7d"
_KW_INPUTS = ("lag_1d", "lag_2d", "lag_7d", "mean_1d", "mean_7d")


def naive_names(target: str) -> tuple[str, ...]:
    """The naive baselines for a target: yesterday, same day last week (+ clear-sky
    persistence for PV: yesterday's clear-sky index times today's clear sky)."""
    base = ("seasonal_naive_1d", "seasonal_naive_7d")
    return (*base, "cs_persistence") if target == "pv" else base


def uses_weather(kind: str) -> bool:
    return kind.endswith("_wx")


def members(kind: str) -> tuple[str, ...]:
    """The kinds an ensemble kind averages (with its weather suffix); () for others."""
    sfx = "_wx" if uses_weather(kind) else ""
    return tuple(m + sfx for m in ENSEMBLE.get(kind.removesuffix("_wx"), ()))


def columns(kind: str, target: str, feats: pd.DataFrame) -> list[str]:
    if kind in NAIVE:
        return [NAIVE[kind]]
    if members(kind):
        return list(dict.fromkeys(c for m in members(kind) for c in columns(m, target, feats)))
    base = kind.removesuffix("_wx")
    wx = WX_COLS.get(target, []) if uses_weather(kind) else []
    if base == "rf":
        return _RF_BASE + (_PV if target == "pv" else []) + wx
    if target == "pv":
        return _LR_PV + wx
    onehot = [c for c in feats.columns if _ONEHOT.fullmatch(c)]
    return [*onehot, "lag_1d", "lag_7d", "mean_1d", "mean_7d", "holiday", *wx]


def complete(feats: pd.DataFrame) -> pd.DataFrame:
    """Fill the longer lags from the shorter ones (short histories, recursive horizons)."""
    out = feats.copy()
    for col, src in _FALLBACK.items():
        if col in out:
            out[col] = out[col].fillna(out[src])
    return out


class Ensemble:
    """The mean of fitted members, each with its own columns."""

    def __init__(self, parts: list[tuple[Any, list[str]]]) -> None:
        self.parts = parts


class Naive:
    """A naive method as an estimator: the forecast is its one input column."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> Naive:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x[:, 0], dtype=float)


def make(kind: str, n_trees: int = 100, n_jobs: int = 1) -> Any:
    if kind in NAIVE:
        return Naive()
    base = kind.removesuffix("_wx")
    if base == "rf":
        return RandomForestRegressor(n_estimators=n_trees, min_samples_leaf=3, max_features=0.5,
                                     n_jobs=n_jobs, random_state=0)
    if base == "lr":
        return LinearRegression()
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KIND_NAMES)})")


def fit(kind: str, target: str, feats: pd.DataFrame, y: pd.Series, n_trees: int = 100,
        n_jobs: int = 1) -> tuple[Any, list[str]]:
    cols = columns(kind, target, feats)
    if kind in NAIVE:
        return Naive(), cols
    if members(kind):
        return Ensemble([fit(m, target, feats, y, n_trees, n_jobs) for m in members(kind)]), cols
    x = feats[cols]
    ok = x.notna().all(axis=1).to_numpy() & y.notna().to_numpy()
    if ok.sum() < 96:
        raise ValueError(f"{target}: only {int(ok.sum())} usable 15-minute rows to train "
                         f"{KIND_NAMES.get(kind, kind)} on (need a day of history beyond the "
                         f"lags{' and a weather forecast' if uses_weather(kind) else ''}, "
                         f"at least 96)")
    model = make(kind, n_trees, n_jobs)
    xs, level = _relative(x, feats, target)
    ok &= np.isfinite(level)
    model.fit(xs[ok], y.to_numpy()[ok] / level[ok])
    return model, cols


def _relative(x: pd.DataFrame, feats: pd.DataFrame, target: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs with the kW columns over the level, and the level (1 where not scaled;
    NaN where the level is unknown or not positive)."""
    if target != "load" or _LEVEL not in feats:
        return x.to_numpy(), np.ones(len(x))
    level = feats[_LEVEL].to_numpy(dtype=float)
    level = np.where(level > 1e-6, level, np.nan)
    out = x.copy()
    for c in _KW_INPUTS:
        if c in out:
            out[c] = out[c].to_numpy(dtype=float) / level
    return out.to_numpy(), level


def predict(model: Any, cols: list[str], feats: pd.DataFrame, target: str) -> np.ndarray:
    """Point forecast; NaN where a feature is missing; PV clipped to >= 0 and 0 at night."""
    if isinstance(model, Ensemble):
        return np.mean([predict(m, c, feats, target) for m, c in model.parts], axis=0)
    x = feats[cols]
    ok = x.notna().all(axis=1).to_numpy().copy()
    out = np.full(len(feats), np.nan)
    if not isinstance(model, Naive):
        xs, level = _relative(x, feats, target)
        ok &= np.isfinite(level)
        if ok.any():
            out[ok] = model.predict(xs[ok]) * level[ok]
    elif ok.any():
        out[ok] = model.predict(x.to_numpy()[ok])
    out = np.maximum(out, 0.0)
    if target == "pv":
        out = np.where(feats["cs"].to_numpy() > 0, out, 0.0)
    return out
