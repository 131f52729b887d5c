"""Forecast features: calendar (site-local, with the country's holidays), lags, clear sky.

Every lag is at least one day old, so a forecast issued at any time for the next 24 h
sees only the past; longer horizons feed predictions back in (``forecast`` does that).
"""

from __future__ import annotations

import functools

import holidays
import numpy as np
import pandas as pd
import pvlib

from gateway.analytics import pvchain
from gateway.analytics.data import local_days
from gateway.analytics.site import SiteInfo

DAY = 96  # quarter hours per day
WEEK = 7 * DAY
PV_DERATE = 0.9 * 0.97  # system losses x inverter efficiency, as the simulator assumes


@functools.lru_cache(maxsize=64)
def _holiday_set(country: str, years: tuple[int, ...]) -> frozenset[object]:
    try:
        cal = holidays.country_holidays(country, years=list(years))
    except NotImplementedError:
        return frozenset()
    return frozenset(cal.keys())


def calendar(index: pd.DatetimeIndex, info: SiteInfo) -> pd.DataFrame:
    """Site-local calendar: quarter of day, weekday, day type (workday/sat/sun+holiday)."""
    local = index.tz_convert(info.timezone)
    dates = local.date
    hol_set = _holiday_set(info.country, tuple(sorted(set(local.year.tolist()))))
    hol = np.fromiter((d in hol_set for d in dates), dtype=bool, count=len(dates))
    dow = local.day_of_week.to_numpy()
    daytype = np.where(hol | (dow == 6), 2, np.where(dow == 5, 1, 0))
    qh = (local.hour * 4 + local.minute // 15).to_numpy()
    doy = local.day_of_year.to_numpy()
    out = pd.DataFrame({
        "qh": qh, "dow": dow, "daytype": daytype, "holiday": hol.astype(float),
        "hour_sin": np.sin(2 * np.pi * qh / DAY), "hour_cos": np.cos(2 * np.pi * qh / DAY),
        "doy_sin": np.sin(2 * np.pi * doy / 365.25), "doy_cos": np.cos(2 * np.pi * doy / 365.25),
    }, index=index)
    hours = qh // 4
    for h in range(24):  # one-hot hour x day type: lets the linear model draw the profile
        for d in range(3):
            out[f"h{h}_d{d}"] = ((hours == h) & (daytype == d)).astype(float)
    return out


def clear_sky_ghi(index: pd.DatetimeIndex, info: SiteInfo) -> np.ndarray:
    """Clear-sky GHI (W/m2, Haurwitz) at the site at each quarter's midpoint."""
    mid = index + pd.Timedelta(minutes=7.5)
    loc = pvlib.location.Location(info.latitude, info.longitude)
    cs = loc.get_clearsky(mid, model="haurwitz")
    return np.nan_to_num(cs["ghi"].to_numpy(dtype=float)).clip(min=0.0)


def weather_features(idx: pd.DatetimeIndex, target: str, info: SiteInfo,
                     wx: pd.DataFrame | None, cs: np.ndarray | None) -> dict[str, np.ndarray]:
    """Features from a day-ahead weather forecast (``ghi_fc_w_m2``, ``temp_fc_c`` at each
    quarter); NaN where the forecast does not cover a row."""
    nan = np.full(len(idx), np.nan)
    w = wx.reindex(idx) if wx is not None else pd.DataFrame(index=idx)
    if target == "pv":
        ghi = w["ghi_fc_w_m2"].to_numpy(dtype=float) if "ghi_fc_w_m2" in w else nan
        kt = np.clip(ghi / np.maximum(clear_sky_ghi(idx, info), 1.0), 0.0, 1.2)
        kt = np.where(np.isfinite(ghi), kt, np.nan)
        temp = w["temp_fc_c"].to_numpy(dtype=float) if "temp_fc_c" in w else None
        return {"kt_fc": kt, "pv_fc": (cs if cs is not None else nan) * kt,
                "pv_phys": pvchain.forecast_pv(idx, info, ghi, temp)}
    if target == "load":
        temp = w["temp_fc_c"].to_numpy(dtype=float) if "temp_fc_c" in w else nan
        day = pd.Series(temp, index=idx).groupby(local_days(idx, info.timezone)).transform(
            "mean").to_numpy()
        hdd = np.maximum(0.0, 15.0 - day)
        hours = idx.tz_convert(info.timezone).hour.to_numpy()
        # heating degrees against the week the load level (level_7d) was measured in:
        # a level learnt in a mild week under-forecasts a cold day, and the other way round
        ld = local_days(idx, info.timezone)
        daily_hdd = pd.Series(hdd, index=ld).groupby(level=0).mean()
        prev = np.column_stack([daily_hdd.reindex(ld - k).to_numpy() for k in range(1, 8)])
        n = np.isfinite(prev).sum(axis=1)
        week = np.where(n > 0, np.nansum(prev, axis=1) / np.maximum(n, 1), np.nan)
        return {"temp_fc": temp, "hdd_fc": hdd,
                "hdd_fc_day": hdd * ((hours >= 6) & (hours < 22)),
                "hdd_delta": np.where(np.isfinite(week), hdd - week, 0.0)}
    return {}


def clear_sky_pv(index: pd.DatetimeIndex, info: SiteInfo) -> np.ndarray:
    """Clear-sky AC power (kW) of the site's PV arrays at each quarter's midpoint."""
    if not info.pv:
        return np.zeros(len(index))
    mid = index + pd.Timedelta(minutes=7.5)
    loc = pvlib.location.Location(info.latitude, info.longitude)
    sp = loc.get_solarposition(mid)
    cs = loc.get_clearsky(mid, model="haurwitz", solar_position=sp)
    zen = sp["apparent_zenith"].to_numpy(dtype=float)
    ghi = np.nan_to_num(cs["ghi"].to_numpy(dtype=float)).clip(min=0.0)
    parts = pvlib.irradiance.erbs(ghi, zen, mid.day_of_year.to_numpy())
    total = np.zeros(len(index))
    for a in info.pv:
        irr = pvlib.irradiance.get_total_irradiance(
            a.tilt_deg, a.azimuth_deg, zen, sp["azimuth"].to_numpy(dtype=float),
            np.nan_to_num(np.asarray(parts["dni"], dtype=float)), ghi,
            np.nan_to_num(np.asarray(parts["dhi"], dtype=float)), model="isotropic")
        poa = np.where(zen < 90, np.nan_to_num(np.asarray(irr["poa_global"], dtype=float)), 0.0)
        total += np.minimum(a.kwp * poa.clip(min=0.0) / 1000.0 * PV_DERATE, a.p_rated_kw)
    return total


def _prev_day(values: pd.Series, local_day: np.ndarray, days_back: int, how: str) -> np.ndarray:
    """Per row: the daily aggregate (sum/mean) of the local day ``days_back`` before."""
    g = values.groupby(local_day)
    total, count = g.sum(), g.count()
    daily = (total if how == "sum" else total / count.clip(lower=1)).where(count >= 80)
    keys = local_day - days_back  # a day with < 80 of its ~96 quarters known counts as unknown
    return daily.reindex(keys).to_numpy(dtype=float)


def build(y: pd.Series, target: str, info: SiteInfo, cs: np.ndarray | None = None,
          wx: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features for every row of ``y`` (15-minute kW, UTC index); NaN where lags are missing.

    ``wx``: the day-ahead weather forecast valid at each row (see ``weather_features``).
    """
    idx = pd.DatetimeIndex(y.index)
    f = calendar(idx, info)
    local_day = local_days(idx, info.timezone)
    f["lag_1d"] = y.shift(DAY).to_numpy()
    f["lag_2d"] = y.shift(2 * DAY).to_numpy()
    f["lag_7d"] = y.shift(WEEK).to_numpy()
    f["mean_1d"] = _prev_day(y, local_day, 1, "mean")
    f["mean_7d"] = _prev_day(y, local_day, 7, "mean")
    # the level of the last week, every weekday once: what a step in consumption moves
    week = np.column_stack([_prev_day(y, local_day, k, "mean") for k in range(1, 8)])
    known = np.isfinite(week).sum(axis=1)
    f["level_7d"] = np.where(known >= 4, np.nansum(week, axis=1) / np.maximum(known, 1),
                             np.nan)
    if target == "pv":
        c = clear_sky_pv(idx, info) if cs is None else cs
        f["cs"] = c
        cs_s = pd.Series(c, index=idx)
        for k in (1, 2):
            num = _prev_day(y, local_day, k, "sum")
            den = _prev_day(cs_s, local_day, k, "sum")
            f[f"kt_{k}d"] = np.clip(num / np.maximum(den, 1e-6), 0.0, 1.5)
        f["cs_kt"] = c * f["kt_1d"].to_numpy()
        f["cs_kt2"] = c * 0.5 * (f["kt_1d"].to_numpy() + f["kt_2d"].to_numpy())
        # The site's own clear-day shape: the best of the last 14 days at each quarter hour
        # (catches shading, orientation and weather-file quirks a clear-sky model misses).
        lagged = np.column_stack([y.shift(k * DAY).to_numpy() for k in range(1, 15)])
        env = np.nanmax(np.where(np.isnan(lagged), -np.inf, lagged), axis=1)
        env = np.where(np.isfinite(env), env, np.nan)
        f["env"] = env
        env_s = pd.Series(env, index=idx)
        den = _prev_day(env_s.shift(-DAY), local_day, 1, "sum")  # yesterday's own envelope
        num = _prev_day(y, local_day, 1, "sum")
        f["env_kt"] = env * np.clip(num / np.maximum(den, 1e-6), 0.0, 1.5)
    wf = weather_features(idx, target, info, wx, f["cs"].to_numpy() if target == "pv" else None)
    for name, col in wf.items():
        f[name] = col
    return f


