"""A synthetic day-ahead weather forecast: the coming day's truth with realistic error.

Real day-ahead forecasts get the day's cloudiness roughly right but miss its timing and
detail: here the forecast clear-sky index is the true hourly index smoothed over 3 h,
plus a bias for the whole day and an hourly AR(1) error; temperature is the truth plus
a daily bias and hourly noise. The error depends only on (seed, day), so every caller
(demo endpoint, reference data, tests) sees the same forecast for the same day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim_devices.physics.weather import DAY_S, RES_S, Weather

_PER_H = int(3600 / RES_S)
KT_DAY_BIAS_SD = 0.15  # clear-sky index: error shared by the whole day
KT_HOUR_SD = 0.18  # and an hourly AR(1) error on top
KT_HOUR_PHI = 0.8
TEMP_DAY_BIAS_SD_C = 1.0
TEMP_HOUR_SD_C = 0.7


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    eps = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = eps[0] * sd
    k = np.sqrt(1 - phi * phi) * sd
    for i in range(1, n):
        out[i] = phi * out[i - 1] + k * eps[i]
    return out


def forecast_day(weather: Weather, day: int) -> pd.DataFrame:
    """The forecast for UTC day ``day`` (days since 1970), hourly (index = hour starts).

    Columns: ghi_w_m2 (mean over the hour), temp_air_c, wind_ms (mid-hour values).
    """
    w = weather.day(day * DAY_S)
    n = 24 * _PER_H
    ghi = w.ghi[:n].reshape(24, _PER_H).mean(axis=1)
    cs = w.ghi_cs[:n].reshape(24, _PER_H).mean(axis=1)
    up = cs > 1.0
    kt = np.where(up, ghi / np.maximum(cs, 1e-9), np.nan)
    smooth = pd.Series(kt).rolling(3, center=True, min_periods=1).mean().to_numpy()
    rng = np.random.default_rng([weather.seed, 104729, day])
    kt_fc = np.clip(smooth + rng.normal(0.0, KT_DAY_BIAS_SD)
                    + _ar1(rng, 24, KT_HOUR_PHI, KT_HOUR_SD), 0.03, 1.0)
    mid = np.arange(24) * _PER_H + _PER_H // 2
    temp = w.temp_c[mid] + rng.normal(0.0, TEMP_DAY_BIAS_SD_C) + _ar1(rng, 24, 0.7,
                                                                       TEMP_HOUR_SD_C)
    wind = np.clip(w.wind_ms[mid] * (1.0 + _ar1(rng, 24, 0.8, 0.15)), 0.0, None)
    idx = pd.date_range(pd.Timestamp(day * DAY_S, unit="s", tz="UTC"), periods=24, freq="h")
    return pd.DataFrame({"ghi_w_m2": np.where(up, np.nan_to_num(kt_fc) * cs, 0.0),
                         "temp_air_c": temp, "wind_ms": wind}, index=idx)


def forecast(weather: Weather, start_s: float, hours: int = 48) -> pd.DataFrame:
    """Hourly forecast from the hour containing ``start_s`` for ``hours`` hours."""
    h0 = int(start_s // 3600)
    days = range(h0 * 3600 // int(DAY_S), (h0 + hours) * 3600 // int(DAY_S) + 1)
    frame = pd.concat([forecast_day(weather, d) for d in days])
    t0 = pd.Timestamp(h0 * 3600, unit="s", tz="UTC")
    return frame[(frame.index >= t0) & (frame.index < t0 + pd.Timedelta(hours=hours))]
