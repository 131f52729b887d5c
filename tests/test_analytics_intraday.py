"""Intraday PV from the latest measurements, judged against clear-sky persistence on
weeks neither the models nor the blend weights were chosen on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gateway.analytics import intraday
from gateway.analytics.data import local_days, reference_year
from gateway.analytics.features import clear_sky_pv
from gateway.analytics.site import site_info
from gateway.config.loader import load_config
from tests.conftest import REPO

WEEKS = 4  # fit, validation, fit, test


@pytest.fixture(autouse=True)
def small_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trees on at most 5000 rows: the same code, fitted in a fraction of the time."""
    monkeypatch.setattr(intraday, "TREE_ROWS", 5000)


def _synthetic(seed: int, anti_on: tuple[int, ...] = ()) -> tuple[np.ndarray, ...]:
    """``WEEKS`` weeks of quarter hours: a clear-sky curve (sine, 6-18 h), a true clear-sky
    index (a day level, an hourly AR(1) of clouds and quarter-hour flicker) and a day-ahead
    forecast with a known error: a day bias plus an hourly AR(1) (phi 0.8), so the error
    seen now says much about the next hour and less about the hours after. On the weeks
    ``week % 4 in anti_on`` the forecast is the opposite of the truth (1.1 - index)."""
    rng = np.random.default_rng(seed)
    days = WEEKS * 7
    q = np.arange(days * 96)
    hour = (q % 96) / 4.0
    cs = np.where((hour > 6) & (hour < 18), 10.0 * np.sin(np.pi * (hour - 6) / 12), 0.0)
    day = 20_000 + q // 96

    def ar1(n: int, phi: float, sd: float) -> np.ndarray:
        out = np.zeros(n)
        for i in range(1, n):
            out[i] = phi * out[i - 1] + np.sqrt(1 - phi * phi) * sd * rng.standard_normal()
        return out

    hourly = np.repeat(ar1(days * 24, 0.85, 0.25), 4)
    level = np.repeat(rng.uniform(0.35, 0.85, days), 96)
    kt = np.clip(level + hourly + rng.normal(0, 0.05, len(q)), 0.05, 1.1)
    err = np.repeat(rng.normal(0, 0.05, days), 96) + np.repeat(ar1(days * 24, 0.8, 0.12), 4)
    kt_fc = np.clip(pd.Series(kt).rolling(4, center=True, min_periods=1).mean().to_numpy()
                    + err, 0.03, 1.1)
    week = (day - day.min()) // 7
    anti = np.isin(week % 4, anti_on)
    kt_fc = np.where(anti, np.clip(1.1 - kt, 0.03, 1.1), kt_fc)
    return cs * kt, cs, day, cs * kt_fc


def test_weeks_interleave_train_validation_and_test() -> None:
    day = np.repeat(np.arange(100, 128), 96)  # 4 weeks of quarter hours
    part = intraday.split(day)
    assert [int(part[d * 96]) for d in (0, 7, 14, 21)] == [0, 1, 0, 2]
    assert (part[: 7 * 96] == 0).all()


def test_a_forecast_error_that_decays_is_learnt_and_beats_persistence() -> None:
    pv, cs, day, pv_fc = _synthetic(1)
    res = intraday.evaluate_series(pv, cs, day, pv_fc)
    assert res.method == intraday.BLEND and not res.fell_back and res.note == ""
    assert res.weather and res.test_pairs > 1000
    # test weeks were never looked at while fitting or choosing the blend weights
    assert res.skill_between(1, 3, test=False) > 10 and res.skill_between(1, 3) > 10
    # the weight of the forecast's error now (over 15 min and 1 h) decays with the lead
    coef = res.model.with_wx.coef
    assert coef is not None
    err_now = coef[:, 9] + coef[:, 10]
    assert err_now[0] > 0.3 and err_now[11] < 0.5 * err_now[0]


def test_persistence_is_used_where_the_model_loses_on_validation() -> None:
    # the forecast is right on the fit weeks and the opposite of the truth on validation
    # and test weeks: a model that learnt to trust it loses there, so persistence is used
    pv, cs, day, pv_fc = _synthetic(2, anti_on=(1, 3))
    res = intraday.evaluate_series(pv, cs, day, pv_fc)
    assert res.fell_back and res.method == intraday.PERSISTENCE and "did not beat" in res.note
    assert res.skill_between(1, 3) == 0.0
    assert res.model.with_wx.method == intraday.PERSISTENCE
    assert res.model.describe()["with_weather"] == intraday.PERSISTENCE
    # the daemon's fit: trained on even weeks, checked on odd ones (the opposite there)
    model = intraday.fit_series(*_synthetic(2, anti_on=(1, 3)))
    assert model.with_wx.method == intraday.PERSISTENCE


def test_the_daemon_model_says_what_it_uses_and_stays_within_the_index_bounds() -> None:
    pv, cs, day, pv_fc = _synthetic(3)
    model = intraday.fit_series(pv, cs, day, pv_fc)
    assert model.with_wx.method == intraday.BLEND and model.with_wx.tree_w is not None
    assert "blend" in str(model.describe()["with_weather"])
    origin = int(np.flatnonzero((day == day.max() - 1) & (np.arange(len(day)) % 96 == 40))[0])
    seen = pv.copy()
    seen[origin + 1:] = np.nan  # nothing measured after the origin
    got = model.predict(seen, cs, day, pv_fc, origin)
    assert np.isfinite(got).all() and (got >= 0).all()
    assert (got <= intraday.KT_MAX * cs[origin + 1: origin + 1 + intraday.LEADS] + 1e-9).all()


@pytest.fixture(scope="module")
def spring() -> tuple[object, pd.DataFrame]:
    """6 weeks (May to June) of the demo site's reference year, with its weather forecast."""
    info = site_info(load_config(REPO / "site_configs" / "demo.yaml").config)
    fr = reference_year(info)
    part = fr[(fr.index >= pd.Timestamp("2025-05-12", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-06-23", tz="UTC"))]
    return info, part


def test_predict_projects_the_measured_index_onto_the_clear_sky(spring: tuple) -> None:
    info, part = spring
    model = intraday.fit(part, info)
    idx = pd.DatetimeIndex(part.index)
    cs = clear_sky_pv(idx, info)
    day = local_days(idx, info.timezone)
    noon = int(np.flatnonzero(idx == pd.Timestamp("2025-06-20 09:00", tz="UTC"))[0])
    pv = cs.copy()
    pv[noon - 7: noon + 1] = 0.2 * cs[noon - 7: noon + 1]  # heavy cloud for the last 2 h
    clouded = model.predict(pv, cs, day, None, noon)
    clear = model.predict(cs.copy(), cs, day, None, noon)
    assert np.isfinite(clouded).all() and len(clouded) == intraday.LEADS
    assert (clouded[:4] < 0.5 * cs[noon + 1: noon + 5]).all()  # the next hour stays dull
    assert (clear[:4] > 0.8 * cs[noon + 1: noon + 5]).all()
    night = int(np.flatnonzero(idx == pd.Timestamp("2025-06-20 00:00", tz="UTC"))[0])
    assert np.isnan(model.predict(pv, cs, day, None, night)).all()  # no index to go on
    pv[noon] = np.nan  # the last quarter was not measured: no index, not a zero one
    assert np.isnan(model.predict(pv, cs, day, None, noon)).all()
