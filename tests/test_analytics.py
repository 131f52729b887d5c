"""Analytics: backtests on reference data, Forecaster bands and persistence, battery health."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.analytics import models
from gateway.analytics.battery_health import assess, capacity_estimates
from gateway.analytics.data import reference_year
from gateway.analytics.forecast import Forecaster, train
from gateway.analytics.inject import Fault, simulate
from gateway.analytics.site import SiteInfo, site_info
from gateway.config.loader import load_config
from tests.conftest import REPO


@functools.lru_cache(maxsize=1)
def _demo() -> tuple[object, SiteInfo, pd.DataFrame]:
    cfg = load_config(REPO / "site_configs" / "demo.yaml").config
    info = site_info(cfg)
    return cfg, info, reference_year(info)


def test_reference_year_is_real_profiles() -> None:
    _, info, fr = _demo()
    assert len(fr) == 365 * 96
    assert fr["load_kw"].sum() / 4 == pytest.approx(60_000, rel=0.05)  # kWh over the year
    assert fr["pv_kw"].max() <= 30.0 + 1e-9  # inverter rating
    local = fr.index.tz_convert(info.timezone)
    assert fr["pv_kw"][(local.hour < 4)].max() == 0.0  # no sun at night
    daily = fr["pv_kw"].groupby(local.date).sum() / 4  # kWh per day: real TMY weather varies
    assert daily.std() > 0.2 * daily.mean() and daily.min() < 0.3 * daily.max()


def test_forecaster_predict_bands_horizon_and_save(tmp_path: Path) -> None:
    _, info, fr = _demo()
    part = fr[(fr.index >= pd.Timestamp("2025-04-01", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-05-10", tz="UTC"))]
    fc = train(part, info, version=3, n_trees=10, backtest_days=7, retrain_days=7)
    start = part.index[-1] + pd.Timedelta(minutes=15)
    pred = fc.predict(start, pd.Timedelta(hours=48), pd.Timedelta(hours=1))
    assert set(pred) == {"load", "pv"}
    for df in pred.values():
        assert list(df.columns) == ["p50", "p10", "p90"]
        assert len(df) == 48 and df.index[0] == start.floor("15min")
        assert (df["p10"] <= df["p50"] + 1e-9).all() and (df["p50"] <= df["p90"] + 1e-9).all()
        assert df.notna().all().all()
    pv = pred["pv"]
    night = pv.index.tz_convert(info.timezone).hour.isin([0, 1, 2, 23])
    assert (pv["p90"][night] == 0).all() and pv["p50"].max() > 5.0
    fine = fc.predict(start, pd.Timedelta(hours=2), pd.Timedelta(minutes=5))["load"]
    assert len(fine) == 24
    fc.save(tmp_path)
    back = Forecaster.load_latest(tmp_path)
    assert back is not None and back.version == 3 and back.window == fc.window
    meta = back.meta()["models"]["load"]
    assert meta["kind"] in models.KIND_NAMES.values()
    if meta["kind"].endswith("+weather"):  # trained with a forecast: keeps a fallback
        assert meta["fallback"] in models.KIND_NAMES.values()


def test_intraday_correction_follows_a_level_shift() -> None:
    _, info, fr = _demo()
    part = fr[(fr.index >= pd.Timestamp("2025-03-01", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-04-01", tz="UTC"))].copy()
    fc = train(part, info, n_trees=10, backtest_days=7, retrain_days=7)
    shifted = part.iloc[-8:].copy()
    shifted["load_kw"] += 5.0  # a big extra consumer switched on in the last two hours
    fc.observe(shifted)
    plain = fc.predict(horizon=pd.Timedelta(hours=6), intraday=False)["load"]["p50"]
    corr = fc.predict(horizon=pd.Timedelta(hours=6))["load"]["p50"]
    assert corr.iloc[0] - plain.iloc[0] > 3.0  # the first quarter carries the error
    assert abs(corr.iloc[-1] - plain.iloc[-1]) < 0.5  # and it fades out


def test_battery_health_capacity_resistance_and_fade() -> None:
    cfg, _, _ = _demo()
    t0 = pd.Timestamp("2025-06-01", tz="UTC").timestamp()
    tel, _ = simulate(cfg, t0, 3, [Fault("capacity_fade", "battery", t0 + 1.5 * 86400)])
    bat = tel["battery"]
    early = bat[bat.index < pd.Timestamp(t0 + 1.5 * 86400, unit="s", tz="UTC")]
    rep = assess("battery", early, 50.0)
    assert rep.soh_pct is None and rep.capacity_note.startswith("not enough data")
    assert rep.resistance_mohm is not None and rep.resistance_mohm > 0
    late = capacity_estimates(bat[bat.index >= pd.Timestamp(t0 + 1.6 * 86400, unit="s",
                                                                tz="UTC")])
    assert len(late) >= 1
    assert float(np.median(late.to_numpy())) == pytest.approx(0.85 * 50.0, rel=0.04)
    full = assess("battery", bat, 50.0)
    assert full.soh_slope_pct_per_year is None or full.soh_slope_pct_per_year < 0


def test_battery_health_projects_remaining_life() -> None:
    idx = pd.date_range("2025-01-01", periods=12, freq="15D", tz="UTC")
    caps = np.linspace(48.0, 46.0, 12)  # 2 kWh (4 % of 50) over 165 days
    from gateway.analytics import battery_health as bh

    orig = bh.cycle_capacities
    try:
        bh.cycle_capacities = lambda df, min_dsoc_pct=10.0: pd.DataFrame(  # type: ignore[assignment]
            {"ts": idx, "direction": [1, -1] * 6, "kwh": caps})
        rep = bh.assess("b", pd.DataFrame({"soc_pct": [50.0], "p_kw": [0.0],
                                           "e_charged_kwh": [0.0],
                                           "e_discharged_kwh": [0.0]}), 50.0)
    finally:
        bh.cycle_capacities = orig
    assert rep.soh_slope_pct_per_year == pytest.approx(-4.0 / (165 / 365.25), rel=0.05)
    assert rep.soh_pct is not None and rep.remaining_life_years == pytest.approx(
        (rep.soh_pct - 80.0) / -rep.soh_slope_pct_per_year)


def test_pv_follows_the_measured_clear_sky_index_for_hours() -> None:
    """A dull front at 09:00 on a clear June day: the PV forecast for noon follows the
    measured clear-sky index (a correction in kW of the small morning error would have
    faded by then)."""
    _, info, fr = _demo()
    part = fr[(fr.index >= pd.Timestamp("2025-05-18", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-06-11 07:00", tz="UTC"))].copy()
    fc = train(part, info, n_trees=10, backtest_days=7, retrain_days=7)
    assert fc.intraday_pv is not None
    meta = fc.meta()["intraday_pv"]
    assert meta["horizon_h"] == 6.0 and meta["index_window_min"] in (15, 30, 60, 120)
    for used in (meta["with_weather"], meta["without_weather"]):
        assert used == "clear-sky persistence" or used.startswith(
            "blend of a linear and a boosted-trees index model"), used
    clear = fc.predict(horizon=pd.Timedelta(hours=6))["pv"]["p50"]
    dull = part.iloc[-8:].copy()
    dull["pv_kw"] *= 0.25  # the last two hours at a quarter of what they were
    fc.observe(dull)
    plain = fc.predict(horizon=pd.Timedelta(hours=6), intraday=False)["pv"]["p50"]
    near = fc.predict(horizon=pd.Timedelta(hours=6))["pv"]["p50"]
    assert near.index[0] == pd.Timestamp("2025-06-11 07:00", tz="UTC")
    assert plain.iloc[11] > 10.0  # a horizon that ends before the evening is no night
    assert near.iloc[11] < 0.6 * plain.iloc[11]  # 3 h on (noon local)
    assert near.iloc[11] < 0.6 * clear.iloc[11]
    assert clear.iloc[11] > 0.7 * plain.iloc[11]  # measured clear sky: no such drop


def test_the_daemon_feed_reaches_predict_and_is_not_saved(tmp_path: Path) -> None:
    """The scheduler calls predict without a weather forecast: the forecaster takes the
    feed's (while fresh), and falls back, saying so, when the feed has none."""
    _, info, fr = _demo()
    part = fr[(fr.index >= pd.Timestamp("2025-05-18", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-06-11 07:00", tz="UTC"))].copy()
    fc = train(part, info, n_trees=10, backtest_days=7, retrain_days=7)
    assert fc.meta()["models"]["pv"]["kind"].endswith("+weather")
    wx = fr[["ghi_fc_w_m2", "temp_fc_c"]]
    feed: list[pd.DataFrame | None] = [wx]
    fc.weather_source = lambda: feed[0]
    fc.predict(horizon=pd.Timedelta(hours=24))
    assert "pv" not in fc.notes or "no weather forecast" not in fc.notes["pv"]
    feed[0] = None  # stale or unreachable
    fc.predict(horizon=pd.Timedelta(hours=24))
    assert fc.notes["pv"].startswith("no weather forecast up to")
    back = Forecaster.load_latest(fc.save(tmp_path).parent)
    assert back is not None and back.weather_source is None
