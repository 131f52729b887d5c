"""PV from a weather forecast through the PV chain: given the true hourly weather as the
forecast, it reproduces the simulated PV far better than the forecast's GHI index on the
clear-sky curve does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gateway.analytics import features, pvchain
from gateway.analytics.site import site_info
from gateway.config.loader import load_config
from sim_devices.physics.base import AcBus
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.weather import Weather
from sim_devices.settings import PvSim, WeatherSettings
from tests.conftest import REPO


@pytest.mark.parametrize("month", [6, 12])
def test_perfect_hourly_forecast_gives_the_simulated_pv(month: int) -> None:
    info = site_info(load_config(REPO / "site_configs" / "demo.yaml").config)
    wx = Weather(info.latitude, info.longitude, info.timezone, WeatherSettings(model="tmy"),
                 seed=1, cache_days=10)
    invs = [PvInverter(a.device_id, AcBus(), wx, a.kwp, a.p_rated_kw,
                       PvSim(tilt_deg=a.tilt_deg, azimuth_deg=a.azimuth_deg)) for a in info.pv]
    idx = pd.date_range(f"2025-{month:02d}-03", periods=7 * 96, freq="15min", tz="UTC")
    ts = idx.as_unit("s").asi8.astype(float) + 450.0  # quarter midpoints
    truth = np.sum([inv.available_kw_at(ts) for inv in invs], axis=0)
    d0 = int(ts[0] // 86400)
    ghi_5min = np.concatenate([wx.day((d0 + d) * 86400.0).ghi[:288] for d in range(7)])
    ghi_fc = np.repeat(ghi_5min.reshape(-1, 12).mean(axis=1), 4)  # hour means, per quarter
    pv = pvchain.forecast_pv(idx, info, ghi_fc, wx.temp_at(ts))
    flat = features.weather_features(idx, "pv", info, pd.DataFrame({"ghi_fc_w_m2": ghi_fc},
                                     index=idx), features.clear_sky_pv(idx, info))["pv_fc"]
    assert truth.sum() > 0
    assert abs(pv.sum() / truth.sum() - 1.0) < 0.03  # energy over the week
    mae, mae_flat = np.abs(pv - truth).mean(), np.abs(flat - truth).mean()
    assert mae < 0.5 * mae_flat
    assert (pv[truth == 0] == 0).all()  # night stays dark


def test_a_missing_forecast_hour_gives_no_value() -> None:
    info = site_info(load_config(REPO / "site_configs" / "demo.yaml").config)
    idx = pd.date_range("2025-06-03 08:00", periods=8, freq="15min", tz="UTC")
    ghi = np.array([600.0] * 4 + [np.nan] * 4)
    pv = pvchain.forecast_pv(idx, info, ghi, None)
    assert np.isfinite(pv[:4]).all() and (pv[:4] > 0).all() and np.isnan(pv[4:]).all()
