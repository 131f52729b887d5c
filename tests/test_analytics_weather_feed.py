"""Weather-forecast feed: the simulator's Open-Meteo endpoint on loopback, parsing,
staleness (injected clock) and clear errors for unusable input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.analytics.weather_feed import FeedError, WeatherFeed, fetch, parse_open_meteo
from sim_devices.physics.weather import Weather
from sim_devices.physics.wx_forecast import forecast_day
from sim_devices.settings import WeatherSettings
from sim_devices.weather_endpoint import ForecastServer, write_file

T0 = pd.Timestamp("2025-05-10", tz="UTC").timestamp()


def _weather() -> Weather:
    return Weather(47.99, 7.84, "Europe/Berlin", WeatherSettings(model="tmy"), seed=1)


def test_endpoint_serves_a_forecast_correlated_with_but_not_equal_to_the_truth() -> None:
    w = _weather()
    now = [T0]
    srv = ForecastServer(w, lambda: now[0]).start()
    try:
        clock = [1000.0]
        feed = WeatherFeed(srv.url, refresh_s=3600, max_age_s=7200, clock=lambda: clock[0])
        assert feed.current() is None and "no weather forecast yet" in feed.status
        assert feed.refresh()
    finally:
        srv.close()
    fc = feed.current()
    assert fc is not None and len(fc) == 48 * 4
    assert fc.index[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    day = int(T0 // 86400)
    hourly = forecast_day(w, day)["ghi_w_m2"].to_numpy()
    assert np.allclose(fc["ghi_fc_w_m2"].to_numpy()[:96:4], hourly, atol=0.1)  # hour means
    truth = w.day(T0).ghi[:288].reshape(24, 12).mean(axis=1)
    fc_h = fc["ghi_fc_w_m2"].to_numpy()[:96:4]
    assert 0.6 < np.corrcoef(fc_h, truth)[0, 1] < 0.999
    assert np.abs(fc_h - truth).mean() > 5.0
    clock[0] += 7201  # no refresh for longer than max_age_s: stale, nothing to use
    assert feed.current() is None and feed.state == "stale"
    assert feed.status == ("weather forecast: stale since 1970-01-01 02:16 UTC (last good fetch "
                           "2.0 h ago, max 2.0 h), using the model without weather")


def test_file_source_and_failed_refresh_keeps_the_last_good_forecast(tmp_path: Path) -> None:
    path = write_file(tmp_path / "wx.json", _weather(), T0)
    feed = WeatherFeed(str(path), max_age_s=3600, clock=lambda: 0.0)
    assert feed.refresh() and feed.current() is not None
    path.write_text("{not json")
    assert not feed.refresh()
    assert feed.current() is not None and feed.last_error is not None
    assert str(path) in feed.last_error
    feed2 = WeatherFeed("http://127.0.0.1:9/v1/forecast", clock=lambda: 0.0)  # discard port
    assert not feed2.refresh() and feed2.current() is None
    assert "cannot read the forecast" in feed2.status and feed2.state == "none"
    assert feed2.status.startswith("no weather forecast yet from http://127.0.0.1:9/v1/forecast"
                                   ", using the model without weather (")


def test_bad_documents_give_one_line_errors(tmp_path: Path) -> None:
    good = json.loads(write_file(tmp_path / "a.json", _weather(), T0).read_text())
    with pytest.raises(FeedError, match="no 'hourly' object"):
        parse_open_meteo({"daily": {}})
    bad = json.loads(json.dumps(good))
    del bad["hourly"]["shortwave_radiation"]
    with pytest.raises(FeedError, match="hourly lacks shortwave_radiation"):
        parse_open_meteo(bad)
    bad = json.loads(json.dumps(good))
    bad["utc_offset_seconds"] = 7200
    with pytest.raises(FeedError, match="must be UTC"):
        parse_open_meteo(bad)
    bad = json.loads(json.dumps(good))
    bad["hourly"]["shortwave_radiation"][3] = -5
    with pytest.raises(FeedError, match=r"outside 0\.\.1500"):
        parse_open_meteo(bad)
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(FeedError, match=r"b\.json: no .hourly."):
        fetch(str(tmp_path / "b.json"))


def test_a_refresh_keeps_the_hours_before_the_new_issue(tmp_path: Path) -> None:
    """A service that serves from the current hour on (as the simulator does) still leaves
    the morning's forecast, which intraday PV compares with what was measured."""
    w = _weather()
    path = write_file(tmp_path / "wx.json", w, T0 + 6 * 3600)
    feed = WeatherFeed(str(path), clock=lambda: 0.0)
    assert feed.refresh()
    morning = feed.current()
    assert morning is not None
    write_file(path, w, T0 + 10 * 3600)
    assert feed.refresh()
    fc = feed.current()
    assert fc is not None
    assert fc.index[0] == pd.Timestamp(T0 + 6 * 3600, unit="s", tz="UTC")
    assert fc.index[-1] == pd.Timestamp(T0 + 58 * 3600 - 900, unit="s", tz="UTC")
    early = fc.index < pd.Timestamp(T0 + 10 * 3600, unit="s", tz="UTC")
    assert fc[early].equals(morning[morning.index.isin(fc.index[early])])
