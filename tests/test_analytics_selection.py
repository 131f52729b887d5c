"""Forecast model selection: validation chooses, the test window is scored once, skill is
against the strongest naive method, a naive method wins when no model beats it, and a
weather-driven model falls back when the weather forecast is missing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gateway.analytics import backtest, models
from gateway.analytics.forecast import train
from tests.test_analytics import _demo


def test_load_model_beats_the_strongest_naive_and_is_chosen_on_validation() -> None:
    _, info, fr = _demo()
    part = fr[fr.index < pd.Timestamp("2025-05-20", tz="UTC")]
    res = backtest.evaluate(part, info, "load", val_days=7, test_days=7, retrain_days=7,
                            n_trees=20)
    print("\n" + res.metrics.round(2).to_string())
    assert res.test is not None and res.test.index[0] > res.validation.index[-1]
    val = {k: res.validation.mae(k) for k in res.validation.preds}
    assert res.best == min(val, key=lambda k: val[k])  # chosen on validation only
    m = res.metrics
    naive = ["seasonal_naive_1d", "seasonal_naive_7d"]
    assert set(naive) <= set(m.index)
    strongest = min(naive, key=lambda k: float(m.loc[k, "mae_kw"]))
    assert m.loc[strongest, "skill_pct"] == 0.0 and (m.loc[naive, "skill_pct"] <= 0).all()
    assert res.best in ("rf", "lr", "rf_wx", "lr_wx")
    assert m.loc[models.KIND_NAMES[res.best], "skill_pct"] > 10.0  # on the unseen test days
    assert 0.5 < res.coverage < 0.98


def test_test_window_never_changes_the_choice() -> None:
    _, info, fr = _demo()
    part = fr[fr.index < pd.Timestamp("2025-05-20", tz="UTC")].copy()
    a = backtest.evaluate(part, info, "load", val_days=7, test_days=7, kinds=("lr",))
    assert a.test is not None
    # Make the test days something the chosen model cannot follow: the choice stays.
    part.loc[part.index >= a.test.index[0], "load_kw"] *= 3.0
    b = backtest.evaluate(part, info, "load", val_days=7, test_days=7, kinds=("lr",))
    assert b.best == a.best and b.fallback == a.fallback
    assert b.validation.mae(a.best) == a.validation.mae(a.best)
    assert b.test is not None and b.test.mae(a.best) > a.test.mae(a.best)


def test_falls_back_to_the_best_naive_method_when_no_model_beats_it() -> None:
    _, info, fr = _demo()
    part = fr[fr.index < pd.Timestamp("2025-04-20", tz="UTC")].copy()
    week = part["load_kw"].to_numpy()[: 7 * 96]
    part["load_kw"] = np.resize(week, len(part))  # every week repeats exactly
    part = part.drop(columns=["pv_kw"])
    fc = train(part, info, n_trees=10, backtest_days=7, retrain_days=7)
    tm = fc.models["load"]
    assert tm.kind == "seasonal_naive_7d" and "falls back" in tm.note
    pred = fc.predict(horizon=pd.Timedelta(hours=24), intraday=False)["load"]["p50"]
    expect = part["load_kw"].shift(freq="7D").reindex(pred.index)  # last week's same quarter
    assert np.allclose(pred.to_numpy(), expect.to_numpy())
    assert "falls back" in fc.notes["load"]


def test_pv_with_the_weather_forecast_and_its_fallback_without() -> None:
    _, info, fr = _demo()
    part = fr[fr.index < pd.Timestamp("2025-06-10", tz="UTC")]
    part = part[part.index >= pd.Timestamp("2025-04-20", tz="UTC")]
    res: dict[str, backtest.BacktestResult] = {}
    fc = train(part[["pv_kw", "ghi_fc_w_m2", "load_kw"]], info, n_trees=20, backtest_days=14,
               retrain_days=7, results=res, test_days=7)
    pv = res["pv"]
    print("\n" + pv.metrics.round(2).to_string())
    assert {"cs_persistence", "seasonal_naive_1d", "seasonal_naive_7d"} <= set(pv.metrics.index)
    assert pv.best.endswith("_wx") and not pv.fallback.endswith("_wx")
    assert pv.metrics.loc[models.KIND_NAMES[pv.best], "skill_pct"] > 0.0
    tm = fc.models["pv"]
    assert tm.fallback is not None and tm.fallback.kind == pv.fallback
    start = part.index[-1] + pd.Timedelta(minutes=15)
    with_wx = fc.predict(start, pd.Timedelta(hours=24), weather=fr[["ghi_fc_w_m2"]])
    assert "pv" not in fc.notes
    without = fc.predict(start, pd.Timedelta(hours=24))
    assert "no weather forecast" in fc.notes["pv"] and pv.fallback.split("_")[0] in (
        "rf", "lr", "avg", "seasonal", "cs")
    assert not np.allclose(with_wx["pv"]["p50"], without["pv"]["p50"])
