"""Load models learn the load relative to the last week's level, so a site that gained
consumers is forecast at its new level, which a forest trained on the old one cannot
reach by itself."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.analytics import features, models
from gateway.analytics.forecast import Forecaster
from gateway.analytics.site import SiteInfo


@pytest.mark.parametrize("kind", ["rf", "lr"])
def test_a_level_step_is_forecast_at_the_new_level(kind: str) -> None:
    info = SiteInfo(timezone="UTC", country="DE")
    idx = pd.date_range("2025-03-03", periods=40 * 96, freq="15min", tz="UTC")
    qh = np.arange(len(idx)) % 96
    profile = 10.0 + 5.0 * np.sin(2 * np.pi * qh / 96)
    level = np.where(np.arange(len(idx)) >= 30 * 96, 2.0, 1.0)  # doubled from day 30
    y = pd.Series(profile * level, index=idx)
    feats = models.complete(features.build(y, "load", info))
    fit_rows = idx < idx[0] + pd.Timedelta(days=30)  # the model never saw the new level
    est, cols = models.fit(kind, "load", feats[fit_rows], y[fit_rows], n_trees=20)
    day = (idx >= idx[0] + pd.Timedelta(days=38)) & (idx < idx[0] + pd.Timedelta(days=39))
    pred = models.predict(est, cols, feats[day], "load")
    assert np.isfinite(pred).all()
    assert np.abs(pred - y[day].to_numpy()).mean() < 0.03 * float(y[day].mean())


def test_heating_degrees_against_the_week_the_level_comes_from() -> None:
    info = SiteInfo(timezone="UTC", country="DE")
    idx = pd.date_range("2025-01-06", periods=9 * 96, freq="15min", tz="UTC")
    temp = np.where(np.arange(len(idx)) >= 8 * 96, 0.0, 10.0)  # a mild week, then 0 degC
    wx = pd.DataFrame({"temp_fc_c": temp}, index=idx)
    f = features.weather_features(idx, "load", info, wx, None)
    last = slice(8 * 96, 9 * 96)
    assert np.allclose(f["hdd_fc"][last], 15.0)
    assert np.allclose(f["hdd_delta"][last], 15.0 - 5.0)  # 5 degree-days in the mild week
    assert np.allclose(f["hdd_delta"][7 * 96:8 * 96], 0.0)  # a mild day after mild days


def test_a_model_saved_before_the_level_scaling_is_not_loaded(tmp_path: Path) -> None:
    """A format-2 load model predicts absolute kW; read as a relative one it would be off
    by the level, so it is left for a retrain instead."""
    with open(tmp_path / "forecast-v1.pkl", "wb") as fh:
        pickle.dump({"format": 2, "forecaster": "a format-2 forecaster"}, fh)
    assert Forecaster.load_latest(tmp_path) is None
