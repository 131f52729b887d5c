"""Target series at 15 minutes: from the historian, or a reference year from the physics.

Targets are site load (kW consumed by the site, whatever supplies it), PV and wind (kW
produced). The reference year uses the simulator's own sources: a BDEW 2025 standard
load profile (demandlib) with noise, and PV from the TMY3 year pvlib ships through the
simulator's PV model, so backtests run on real reference data without a site history.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from gateway.analytics import history_sql
from gateway.analytics.site import SiteInfo

STEP = pd.Timedelta(minutes=15)
STEP_S = 900.0


def bdew_profile(profile: str, idx: pd.DatetimeIndex, country: str) -> np.ndarray:
    """BDEW 2025 profile (demandlib) on a 15-minute UTC index, holidays of ``country`` as
    Sundays, normalised to 1 kWh per year of ``idx``'s length."""
    import demandlib.bdew as bdew
    import holidays

    local = idx.tz_convert("UTC")
    years = sorted(set(local.year.tolist()))
    try:
        hol: list[object] = list(holidays.country_holidays(country, years=years).keys())
    except NotImplementedError:
        hol = []
    cls = {"H25": bdew.H25, "G25": bdew.G25, "L25": bdew.L25, "P25": bdew.P25,
           "S25": bdew.S25}[profile]
    kw = np.asarray(cls(idx, holidays=hol).to_numpy(dtype=float))
    return kw / (kw.sum() * STEP_S / 3600.0) * (len(idx) / (365 * 96))


def reference_year(info: SiteInfo, year: int = 2025, profile: str = "G25",
                   annual_kwh: float = 60_000.0, noise_pct: float = 5.0,
                   day_noise_pct: float = 5.0, seed: int = 1, heating_pct: float = 0.0,
                   steps: tuple[tuple[str, float], ...] = ()) -> pd.DataFrame:
    """One year of 15-minute means (UTC index) from the simulator's physics.

    Columns: load_kw, pv_kw, poa_w_m2, temp_air_c (truth) and ghi_fc_w_m2, temp_fc_c (the
    synthetic day-ahead weather forecast for each quarter, as a forecast service gives it).
    Load = BDEW profile (holidays as Sundays) x (1 + fast AR(1) noise, tau 2 h) x (1 +
    day-to-day AR(1) factor) + weather-driven heating (``heating_pct`` of the annual energy,
    in proportion to the day's heating degrees below 15 degC), times a level factor from
    each ``steps`` date (local ISO date, factor) on: a real site wanders around its standard
    profile, heats when it is cold and gains or loses consumers; the profile alone is too easy.
    """
    from sim_devices.physics.base import AcBus
    from sim_devices.physics.pv import PvInverter
    from sim_devices.physics.weather import Weather
    from sim_devices.physics.wx_forecast import forecast_day
    from sim_devices.settings import PvSim, WeatherSettings

    start = pd.Timestamp(year=year, month=1, day=1, tz=info.timezone).tz_convert("UTC")
    end = pd.Timestamp(year=year + 1, month=1, day=1, tz=info.timezone).tz_convert("UTC")
    idx = pd.date_range(start, end, freq=STEP, inclusive="left")
    ts = idx.as_unit("s").asi8.astype(float) + STEP_S / 2.0  # quarter midpoints
    rng = np.random.default_rng(seed)
    weather = Weather(info.latitude, info.longitude, info.timezone,
                      WeatherSettings(model="tmy"), seed, cache_days=370)
    temp = weather.temp_at(ts)
    base = bdew_profile(profile, idx, info.country) * annual_kwh
    a = math.exp(-STEP_S / 7200.0)
    fast = _ar1(rng, len(ts), a, noise_pct / 100.0)
    days = local_days(idx, info.timezone)
    _, day_i = np.unique(days, return_inverse=True)
    slow = _ar1(rng, int(day_i.max()) + 1, 0.7, day_noise_pct / 100.0)[day_i]
    load = base * (1.0 + fast) * (1.0 + slow)
    if heating_pct > 0:
        hdd = np.maximum(0.0, 15.0 - pd.Series(temp).groupby(day_i).transform("mean")
                         .to_numpy())
        load = load + hdd / max(float(hdd.sum()) * STEP_S / 3600.0, 1e-9) * (
            heating_pct / 100.0 * annual_kwh)
    local = idx.tz_convert(info.timezone)
    for date, factor in steps:
        load = np.where(local >= pd.Timestamp(date, tz=info.timezone), load * factor, load)
    load = np.clip(load, 0.0, None)

    invs = [PvInverter(a_.device_id, AcBus(), weather, a_.kwp, a_.p_rated_kw,
                       PvSim(tilt_deg=a_.tilt_deg, azimuth_deg=a_.azimuth_deg))
            for a_ in info.pv]
    pv = np.sum([inv.available_kw_at(ts) for inv in invs], axis=0) if invs else np.zeros(
        len(ts))
    poa = (weather.poa_at(ts, invs[0].tilt_deg, invs[0].azimuth_deg) if invs
           else np.zeros(len(ts)))
    d0, d1 = int(ts[0] // 86400), int(ts[-1] // 86400)
    fc = pd.concat([forecast_day(weather, d) for d in range(d0, d1 + 1)])
    fcq = fc.reindex(idx, method="ffill")  # each hour's mean over its four quarters
    return pd.DataFrame({"load_kw": load, "pv_kw": pv, "poa_w_m2": poa, "temp_air_c": temp,
                         "ghi_fc_w_m2": fcq["ghi_w_m2"].to_numpy(),
                         "temp_fc_c": fcq["temp_air_c"].to_numpy()}, index=idx)


def local_days(idx: pd.DatetimeIndex, tz: str) -> np.ndarray:
    """Site-local day number (days since 1970-01-01 local) of each timestamp."""
    return np.asarray(idx.tz_convert(tz).normalize().tz_localize(None).as_unit("s").asi8
                      // 86400)


def _ar1(rng: np.random.Generator, n: int, a: float, sd: float) -> np.ndarray:
    out = np.empty(n)
    z = 0.0
    k = math.sqrt(1.0 - a * a) * sd
    eps = rng.standard_normal(n)
    for i in range(n):
        z = a * z + k * eps[i]
        out[i] = z
    return out


def historian_targets(db_path: Path, info: SiteInfo, since_s: float | None = None
                      ) -> pd.DataFrame:
    """15-minute means of load_kw, pv_kw (and wind_kw) from the historian's p_kw samples.

    Site load = grid import + PV + wind + battery discharge when a grid meter exists,
    else the sum of metered loads and chargers. Samples are held until the next change
    (the historian stores changes only), so the mean is time-weighted.
    """
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no historian database here")
    devs = [a.device_id for a in info.pv] + list(info.wind_ids) + list(info.load_ids) + list(
        info.bess_ids) + ([info.grid_meter] if info.grid_meter else [])
    if not devs:
        return pd.DataFrame(columns=["load_kw"])
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        sql, args = history_sql.points_of_devices(history_sql.layout(db), devs, "p_kw",
                                                  since_s)
        rows = pd.read_sql_query(sql, db, params=args)
    if rows.empty:
        return pd.DataFrame(columns=["load_kw"])
    series = {d: _quarter_means(g) for d, g in rows.groupby("device")}
    frame = pd.DataFrame(series).sort_index()
    z = pd.Series(0.0, index=frame.index)
    pv = sum((frame[a.device_id].fillna(0.0) for a in info.pv if a.device_id in frame), z)
    wind = sum((frame[w].fillna(0.0) for w in info.wind_ids if w in frame), z)
    bess = sum((frame[b].fillna(0.0) for b in info.bess_ids if b in frame), z)
    if info.grid_meter and info.grid_meter in frame:
        load = frame[info.grid_meter] + pv + wind + bess
    else:
        load = sum((frame[d].fillna(0.0) for d in info.load_ids if d in frame), z)
    out = pd.DataFrame({"load_kw": load})
    if info.pv:
        out["pv_kw"] = pv
    if info.wind_ids:
        out["wind_kw"] = wind
    return out.dropna()


def _quarter_means(g: pd.DataFrame) -> pd.Series:
    """Time-weighted 15-minute means of a step signal given at change times."""
    t = pd.to_datetime(g["ts"].to_numpy(), unit="s", utc=True)
    s = pd.Series(g["value"].to_numpy(dtype=float), index=t)
    s = s[~s.index.duplicated(keep="last")]
    fine = s.resample("1min").last().ffill()
    return fine.resample(STEP).mean()


def device_rows(db_path: Path | str, device: str, points: list[str] | tuple[str, ...],
                since_s: float | None = None) -> pd.DataFrame:
    """Good samples (point, ts, value) of one device's points from the historian, by time."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        sql, args = history_sql.points_of_device(history_sql.layout(db), device, points,
                                                 since_s)
        return pd.read_sql_query(sql, db, params=args)


def historian_device_frame(db_path: Path, device: str, points: list[str],
                           since_s: float | None = None, step: str = "1min") -> pd.DataFrame:
    """One device's points from the historian on a regular grid (held between changes)."""
    rows = device_rows(db_path, device, points, since_s)
    cols = {}
    for point, g in rows.groupby("point"):
        t = pd.to_datetime(g["ts"].to_numpy(), unit="s", utc=True)
        s = pd.Series(g["value"].to_numpy(dtype=float), index=t)
        cols[str(point)] = s[~s.index.duplicated(keep="last")].resample(step).last().ffill()
    return pd.DataFrame(cols).dropna()
