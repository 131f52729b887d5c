"""Intraday PV from the latest measurements, judged against clear-sky persistence on
reference weeks neither the coefficients nor the windows were chosen on."""

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


@pytest.fixture(scope="module")
def spring() -> tuple[object, pd.DataFrame]:
    """16 weeks (March to June) of the demo site's reference year, with its weather forecast."""
    info = site_info(load_config(REPO / "site_configs" / "demo.yaml").config)
    fr = reference_year(info)
    part = fr[(fr.index >= pd.Timestamp("2025-03-03", tz="UTC"))
              & (fr.index < pd.Timestamp("2025-06-23", tz="UTC"))]
    return info, part


def test_weeks_interleave_train_validation_and_test() -> None:
    day = np.repeat(np.arange(100, 128), 96)  # 4 weeks of quarter hours
    part = intraday.split(day)
    assert [int(part[d * 96]) for d in (0, 7, 14, 21)] == [0, 1, 0, 2]
    assert (part[: 7 * 96] == 0).all()


def test_model_beats_clear_sky_persistence_on_weeks_it_never_saw(spring: tuple) -> None:
    info, part = spring
    res = intraday.evaluate(part, info, weather=True)
    assert res.weather and not res.fell_back and res.test_pairs > 10_000
    assert res.window in intraday.WINDOWS and res.baseline_window in intraday.WINDOWS
    assert res.span_weeks in intraday.SPANS_WEEKS
    # validation (window and span chosen there) and test (never looked at while choosing)
    assert res.skill_between(1, 3, test=False) > 0 and res.skill_between(1, 3) > 0


def test_without_weather_it_is_never_worse_than_persistence(spring: tuple) -> None:
    info, part = spring
    res = intraday.evaluate(part, info, weather=False)
    assert not res.weather
    if res.fell_back:  # lost on validation: persistence itself, and the note says so
        assert res.skill_between(1, 3) == 0.0 and "did not beat" in res.note
        assert (res.model.coef[:, 0] == 1.0).all() and (res.model.coef[:, 1:] == 0.0).all()
    else:
        assert res.skill_between(1, 3, test=False) > 0 and res.note == ""


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
