"""The two model kinds per target: Random Forest and Linear Regression (scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

KINDS = ("rf", "lr")
KIND_NAMES = {"rf": "random_forest", "lr": "linear_regression"}
_RF_BASE = ["qh", "dow", "daytype", "holiday", "hour_sin", "hour_cos", "doy_sin", "doy_cos",
            "lag_1d", "lag_2d", "lag_7d", "mean_1d", "mean_7d"]
_PV = ["cs", "kt_1d", "kt_2d", "cs_kt", "cs_kt2", "env", "env_kt"]
_LR_PV = ["cs", "cs_kt", "cs_kt2", "lag_1d", "env", "env_kt"]
REQUIRED = ["lag_1d", "mean_1d"]  # a row is predictable once these are known
_FALLBACK = {"lag_2d": "lag_1d", "lag_7d": "lag_1d", "mean_7d": "mean_1d", "kt_2d": "kt_1d",
             "cs_kt2": "cs_kt"}


def columns(kind: str, target: str, feats: pd.DataFrame) -> list[str]:
    if kind == "rf":
        return _RF_BASE + (_PV if target == "pv" else [])
    if target == "pv":
        return _LR_PV
    onehot = [c for c in feats.columns if c.startswith("h") and "_d" in c]
    return [*onehot, "lag_1d", "lag_7d", "mean_1d", "mean_7d", "holiday"]


def complete(feats: pd.DataFrame) -> pd.DataFrame:
    """Fill the longer lags from the shorter ones (short histories, recursive horizons)."""
    out = feats.copy()
    for col, src in _FALLBACK.items():
        if col in out:
            out[col] = out[col].fillna(out[src])
    return out


def make(kind: str, n_trees: int = 100, n_jobs: int = 1) -> Any:
    if kind == "rf":
        return RandomForestRegressor(n_estimators=n_trees, min_samples_leaf=3, max_features=0.5,
                                     n_jobs=n_jobs, random_state=0)
    if kind == "lr":
        return LinearRegression()
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")


def fit(kind: str, target: str, feats: pd.DataFrame, y: pd.Series, n_trees: int = 100,
        n_jobs: int = 1) -> tuple[Any, list[str]]:
    cols = columns(kind, target, feats)
    x = feats[cols]
    ok = x.notna().all(axis=1).to_numpy() & y.notna().to_numpy()
    if ok.sum() < 96:
        raise ValueError(f"{target}: only {int(ok.sum())} usable 15-minute rows to train on "
                         f"(need a day of history beyond the lags, at least 96)")
    model = make(kind, n_trees, n_jobs)
    model.fit(x.to_numpy()[ok], y.to_numpy()[ok])
    return model, cols


def predict(model: Any, cols: list[str], feats: pd.DataFrame, target: str) -> np.ndarray:
    """Point forecast; NaN where a feature is missing; PV clipped to >= 0 and 0 at night."""
    x = feats[cols]
    ok = x.notna().all(axis=1).to_numpy()
    out = np.full(len(feats), np.nan)
    if ok.any():
        out[ok] = model.predict(x.to_numpy()[ok])
    out = np.maximum(out, 0.0)
    if target == "pv":
        out = np.where(feats["cs"].to_numpy() > 0, out, 0.0)
    return out
