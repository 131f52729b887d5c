"""Site weather: irradiance, air temperature, mean wind, precomputed per simulated day.

pvlib does the solar geometry and clear-sky (or TMY3) irradiance once per day at
5-minute resolution; a step only interpolates arrays, so 200 devices stay cheap.
"""

from __future__ import annotations

import functools
import math
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


@functools.lru_cache(maxsize=1)
def tmy3() -> pd.DataFrame:
    """The TMY3 typical year pvlib ships (hourly; one row per hour of a 365-day year)."""
    path = Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"
    data, _meta = pvlib.iotools.read_tmy3(str(path), map_variables=True)
    return data[["ghi", "temp_air", "wind_speed"]].reset_index(drop=True)


class Weather:
    """Weather at one site; deterministic for a given seed."""

    def __init__(self, latitude: float, longitude: float, timezone: str,
                 settings: WeatherSettings, seed: int = 0) -> None:
        self.latitude = latitude
        self.longitude = longitude
        self.timezone = timezone
        self.settings = settings
        self.seed = seed
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
            if len(self._days) >= _CACHE_DAYS:
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
            if len(self._poa) >= 64:
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
        ts = np.arange(start, end, step_s)
        return np.array([self.poa_w_m2(float(t), tilt_deg, azimuth_deg) for t in ts])

    # --- daily precomputation ----------------------------------------------------------
    def _compute_day(self, d: int) -> DayWeather:
        t0 = d * DAY_S
        times = pd.date_range(pd.Timestamp(t0, unit="s", tz="UTC"), periods=_N,
                              freq=f"{int(RES_S)}s")
        sp = pvlib.solarposition.get_solarposition(times, self.latitude, self.longitude)
        zenith = sp["apparent_zenith"].to_numpy(dtype=float)
        azimuth = sp["azimuth"].to_numpy(dtype=float)
        doy = times.day_of_year.to_numpy()
        if self.settings.model == "tmy":
            ghi, temp, wind = self._tmy(times)
            ghi = np.where(zenith < 90, ghi, 0.0)
        else:
            ghi = self._clearsky(times, sp) * self._clouds(d)
            temp = self._temp_model(times, doy)
            wind = np.full(_N, self.settings.wind_mean_ms)
        parts = pvlib.irradiance.erbs(ghi, zenith, doy)
        dni = np.nan_to_num(np.asarray(parts["dni"], dtype=float))
        dhi = np.nan_to_num(np.asarray(parts["dhi"], dtype=float))
        return DayWeather(t0, zenith, azimuth, ghi, dni, dhi, temp, wind)

    def _clearsky(self, times: pd.DatetimeIndex, sp: pd.DataFrame) -> np.ndarray:
        loc = pvlib.location.Location(self.latitude, self.longitude)
        cs = loc.get_clearsky(times, model=self.settings.model, solar_position=sp)
        return np.nan_to_num(cs["ghi"].to_numpy(dtype=float)).clip(min=0.0)

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
            solar_azimuth=w.azimuth, dni=w.dni, ghi=w.ghi, dhi=w.dhi, model="isotropic")
        poa = np.nan_to_num(np.asarray(irr["poa_global"], dtype=float)).clip(min=0.0)
        return np.where(w.zenith < 90, poa, 0.0)
