"""Site weather: irradiance, air temperature, mean wind, precomputed per simulated day.

pvlib does the solar geometry and clear-sky irradiance once per day at 5-minute
resolution; a step only interpolates arrays, so 200 devices stay cheap. The "tmy" model
takes the weather (clouds), not the sun, from the TMY3 year pvlib ships: the TMY
station's clear-sky index (its GHI over the clear sky at its own position) at the same
day of year and solar time scales the site's own clear sky, so a 48 deg N site never sees
the irradiance of a 36 deg N sun. GHI is split with Erbs and transposed with Hay-Davies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

from sim_devices.settings import WeatherSettings

DAY_S = 86400.0
RES_S = 300.0  # resolution of the daily arrays
_N = int(DAY_S / RES_S) + 1  # both ends included
_CACHE_DAYS = 3
_HUB_WIND_FACTOR = (80 / 10) ** 0.14  # TMY wind is at 10 m; turbines sit at ~80 m


@dataclass
class DayWeather:
    """Arrays at RES_S over one UTC day (index 0 = midnight UTC)."""

    t0: float
    zenith: np.ndarray
    azimuth: np.ndarray
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    temp_c: np.ndarray
    wind_ms: np.ndarray
    ghi_cs: np.ndarray  # the site's clear-sky GHI (the clear-sky index is ghi / ghi_cs)
    dni_extra: np.ndarray


def interp(arr: np.ndarray, t0: float, t: float) -> float:
    """Linear interpolation in an array sampled every RES_S from t0."""
    x = (t - t0) / RES_S
    i = int(x)
    if i < 0:
        return float(arr[0])
    if i >= len(arr) - 1:
        return float(arr[-1])
    f = x - i
    return float(arr[i] * (1.0 - f) + arr[i + 1] * f)


TMY_PATH = Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"
_KT_MIN_CS_W_M2 = 40.0  # below this clear-sky GHI the TMY ratio is noise (sunrise, sunset)
_KT_MAX = 1.0  # hourly means: cloud enhancement does not survive an hour's average


@functools.lru_cache(maxsize=1)
def tmy3() -> pd.DataFrame:
    """The TMY3 typical year pvlib ships (hourly; one row per hour of a 365-day year)."""
    data, _meta = pvlib.iotools.read_tmy3(str(TMY_PATH), map_variables=True)
    return data[["ghi", "temp_air", "wind_speed"]].reset_index(drop=True)


def solar_hours(times: pd.DatetimeIndex, longitude: float) -> np.ndarray:
    """Apparent solar time in hours since Jan 1 00:00 (solar) of each time's UTC year."""
    utc = times.tz_convert("UTC")
    jan1 = pd.DatetimeIndex([pd.Timestamp(year=y, month=1, day=1, tz="UTC")
                             for y in utc.year]) if len(utc) else utc
    hours = (utc - jan1).total_seconds().to_numpy() / 3600.0
    eot_min = pvlib.solarposition.equation_of_time_spencer71(utc.day_of_year.to_numpy())
    return np.asarray(hours + longitude / 15.0 + eot_min / 60.0, dtype=float)


@functools.lru_cache(maxsize=2)
def tmy_clear_sky_index(model: str = "simplified_solis") -> tuple[np.ndarray, np.ndarray]:
    """(solar hours since Jan 1, clear-sky index) of each TMY hour at the TMY's own station.

    The index is the hour's GHI over the mean clear-sky GHI of the same hour (computed at
    10-minute points inside it); hours with a low sun are left out (interpolated later).
    """
    data, meta = pvlib.iotools.read_tmy3(str(TMY_PATH), map_variables=True)
    lat, lon, tz = float(meta["latitude"]), float(meta["longitude"]), float(meta["TZ"])
    n = len(data)
    # Rows are labelled at the end of their hour in local standard time: row k covers
    # hour k..k+1 of a 365-day year. Use a fixed non-leap year for the geometry.
    base = pd.Timestamp("2025-01-01", tz="UTC") - pd.Timedelta(hours=tz)
    offs = (np.arange(n)[:, None] * 3600.0 + (np.arange(6)[None, :] + 0.5) * 600.0).ravel()
    times = base + pd.to_timedelta(offs, unit="s")
    loc = pvlib.location.Location(lat, lon)
    cs = loc.get_clearsky(pd.DatetimeIndex(times), model=model)["ghi"].to_numpy(dtype=float)
    cs_mean = np.nan_to_num(cs).clip(min=0.0).reshape(n, 6).mean(axis=1)
    ghi = data["ghi"].to_numpy(dtype=float)
    kt = np.where(cs_mean >= _KT_MIN_CS_W_M2, ghi / np.maximum(cs_mean, 1e-9), np.nan)
    mids = pd.DatetimeIndex(base + pd.to_timedelta(np.arange(n) * 3600.0 + 1800.0, unit="s"))
    x = solar_hours(mids, lon)
    ok = np.isfinite(kt)
    return x[ok], np.clip(kt[ok], 0.0, _KT_MAX)


def tmy_index_at(times: pd.DatetimeIndex, longitude: float,
                 model: str = "simplified_solis") -> np.ndarray:
    """The TMY clear-sky index at the same day of year and solar time as ``times``."""
    x, kt = tmy_clear_sky_index(model)
    year_h = 8760.0
    return np.interp(np.mod(solar_hours(times, longitude), year_h), x, kt, period=year_h)


_TMY_CS_MODEL = "simplified_solis"


@functools.lru_cache(maxsize=1)
def _tmy_mean_temp() -> float:
    return float(tmy3()["temp_air"].mean())


class Weather:
    """Weather at one site; deterministic for a given seed."""

    def __init__(self, latitude: float, longitude: float, timezone: str,
                 settings: WeatherSettings, seed: int = 0, cache_days: int = _CACHE_DAYS
                 ) -> None:
        self.latitude = latitude
        self.longitude = longitude
        self.timezone = timezone
        self.settings = settings
        self.seed = seed
        self.cache_days = cache_days  # a whole year for reference data; 3 for the simulator
        self._days: dict[int, DayWeather] = {}
        self._poa: dict[tuple[int, float, float], np.ndarray] = {}
        lat = abs(latitude)
        self.temp_mean_c = (settings.temp_mean_c if settings.temp_mean_c is not None
                            else 28.0 - 0.38 * lat)
        self.temp_season_amp_c = 0.2 * lat

    # --- public samples ------------------------------------------------------------------
    def day(self, t: float) -> DayWeather:
        d = int(t // DAY_S)
        got = self._days.get(d)
        if got is None:
            got = self._compute_day(d)
            if len(self._days) >= self.cache_days:
                del self._days[min(self._days)]
            self._days[d] = got
        return got

    def poa_w_m2(self, t: float, tilt_deg: float, azimuth_deg: float) -> float:
        """Plane-of-array irradiance for a fixed array at time t."""
        d = int(t // DAY_S)
        key = (d, tilt_deg, azimuth_deg)
        arr = self._poa.get(key)
        if arr is None:
            arr = self._compute_poa(self.day(t), tilt_deg, azimuth_deg)
            if len(self._poa) >= max(64, 2 * self.cache_days):
                self._poa.clear()
            self._poa[key] = arr
        return interp(arr, d * DAY_S, t)

    def temp_air_c(self, t: float) -> float:
        w = self.day(t)
        return interp(w.temp_c, w.t0, t)

    def wind_mean_ms(self, t: float) -> float:
        w = self.day(t)
        return interp(w.wind_ms, w.t0, t)

    def poa_series(self, start: float, end: float, step_s: float, tilt_deg: float,
                   azimuth_deg: float) -> np.ndarray:
        """Vectorised POA over [start, end) (for tests and forecasts)."""
        return self.poa_at(np.arange(start, end, step_s), tilt_deg, azimuth_deg)

    def poa_at(self, ts: np.ndarray, tilt_deg: float, azimuth_deg: float) -> np.ndarray:
        """``poa_w_m2`` at many epoch seconds (a year of quarters in well under a second)."""
        return self._per_day(ts, lambda t: (self.poa_w_m2(t, tilt_deg, azimuth_deg),
                                            self._poa[(int(t // DAY_S), tilt_deg,
                                                       azimuth_deg)])[1])

    def temp_at(self, ts: np.ndarray) -> np.ndarray:
        """``temp_air_c`` at many epoch seconds."""
        return self._per_day(ts, lambda t: self.day(t).temp_c)

    def _per_day(self, ts: np.ndarray, arrays: Callable[[float], np.ndarray]) -> np.ndarray:
        ts = np.asarray(ts, dtype=float)
        out = np.empty(ts.shape)
        days = (ts // DAY_S).astype(np.int64)
        grid = np.arange(_N) * RES_S
        for d in np.unique(days):
            sel = days == d
            out[sel] = np.interp(ts[sel] - d * DAY_S, grid, arrays(float(d * DAY_S)))
        return out

    # --- daily precomputation ----------------------------------------------------------
    def _compute_day(self, d: int) -> DayWeather:
        t0 = d * DAY_S
        times = pd.date_range(pd.Timestamp(t0, unit="s", tz="UTC"), periods=_N,
                              freq=f"{int(RES_S)}s")
        sp = pvlib.solarposition.get_solarposition(times, self.latitude, self.longitude)
        zenith = sp["apparent_zenith"].to_numpy(dtype=float)
        azimuth = sp["azimuth"].to_numpy(dtype=float)
        doy = times.day_of_year.to_numpy()
        ghi_cs, dni_cs, dhi_cs = self._clearsky(times, sp)
        if self.settings.model == "tmy":
            kt = tmy_index_at(times, self.longitude, _TMY_CS_MODEL)
            _ghi, temp, wind = self._tmy(times)
            temp = temp - _tmy_mean_temp() + self.temp_mean_c  # the site's own climate
        else:
            kt = self._clouds(d)
            temp = self._temp_model(times, doy)
            wind = np.full(_N, self.settings.wind_mean_ms)
        ghi = ghi_cs * kt
        parts = pvlib.irradiance.erbs(ghi, zenith, doy)
        dni = np.nan_to_num(np.asarray(parts["dni"], dtype=float))
        dhi = np.nan_to_num(np.asarray(parts["dhi"], dtype=float))
        # A clear sky keeps the clear-sky model's own beam/diffuse split (Erbs, fitted on
        # all skies, puts too little in the beam on clear days); in between, blend.
        w = np.clip((kt - 0.8) / 0.2, 0.0, 1.0)
        dni = w * dni_cs * kt + (1.0 - w) * dni
        dhi = w * dhi_cs * kt + (1.0 - w) * dhi
        extra = np.asarray(pvlib.irradiance.get_extra_radiation(times), dtype=float)
        return DayWeather(t0, zenith, azimuth, ghi, dni, dhi, temp, wind, ghi_cs, extra)

    def _clearsky(self, times: pd.DatetimeIndex, sp: pd.DataFrame
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(GHI, DNI, DHI) of the site's clear sky (the TMY model uses simplified Solis)."""
        model = _TMY_CS_MODEL if self.settings.model == "tmy" else self.settings.model
        loc = pvlib.location.Location(self.latitude, self.longitude)
        cs = loc.get_clearsky(times, model=model, solar_position=sp)
        if "dni" not in cs:  # haurwitz gives GHI only: split it into beam and diffuse
            split = pvlib.irradiance.erbs(cs["ghi"], sp["zenith"], times)
            cs = cs.assign(dni=split["dni"], dhi=split["dhi"])
        up = sp["apparent_zenith"].to_numpy(dtype=float) < 90
        return tuple(np.where(up, np.nan_to_num(cs[k].to_numpy(dtype=float)).clip(min=0.0), 0.0)
                     for k in ("ghi", "dni", "dhi"))  # type: ignore[return-value]

    def _clouds(self, d: int) -> np.ndarray:
        """Clear-sky index per sample: 1 when cloudiness is 0; a seeded AR(1) otherwise."""
        c = self.settings.cloudiness
        if c <= 0:
            return np.ones(_N)
        rng = np.random.default_rng([self.seed, 7919, d])
        phi = 0.9
        eps = rng.standard_normal(_N)
        z = np.empty(_N)
        z[0] = eps[0]
        for i in range(1, _N):
            z[i] = phi * z[i - 1] + math.sqrt(1 - phi * phi) * eps[i]
        return np.clip(1.0 - 0.6 * c + 0.35 * c * z, 0.08, 1.05)

    def _temp_model(self, times: pd.DatetimeIndex, doy: np.ndarray) -> np.ndarray:
        peak_doy = 200 if self.latitude >= 0 else 20
        season = self.temp_mean_c + self.temp_season_amp_c * np.cos(
            2 * np.pi * (doy - peak_doy) / 365.0)
        hours = (times.hour + times.minute / 60.0).to_numpy() + self.longitude / 15.0
        daily = 0.5 * self.settings.temp_day_swing_c * np.cos(2 * np.pi * (hours - 15.0) / 24.0)
        return np.asarray(season + daily, dtype=float)

    def _tmy(self, times: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TMY values at the same local day-of-year and hour as the site's local time."""
        data = tmy3()
        local = times.tz_convert(self.timezone)
        hour = np.minimum(local.day_of_year.to_numpy() - 1, 364) * 24.0 + (
            local.hour + local.minute / 60.0).to_numpy()
        # TMY3 rows are labelled at the end of their hour: row k covers hour k..k+1.
        pos = np.clip(hour - 0.5, 0, len(data) - 1)
        idx = np.arange(len(data), dtype=float)
        ghi = np.interp(pos, idx, data["ghi"].to_numpy(dtype=float))
        temp = np.interp(pos, idx, data["temp_air"].to_numpy(dtype=float))
        wind = np.interp(pos, idx, data["wind_speed"].to_numpy(dtype=float)) * _HUB_WIND_FACTOR
        return ghi, temp, wind

    def _compute_poa(self, w: DayWeather, tilt: float, azimuth: float) -> np.ndarray:
        irr = pvlib.irradiance.get_total_irradiance(
            surface_tilt=tilt, surface_azimuth=azimuth, solar_zenith=w.zenith,
            solar_azimuth=w.azimuth, dni=w.dni, ghi=w.ghi, dhi=w.dhi,
            dni_extra=w.dni_extra, model="haydavies")
        poa = np.nan_to_num(np.asarray(irr["poa_global"], dtype=float)).clip(min=0.0)
        return np.where(w.zenith < 90, poa, 0.0)
