"""Standard load profiles (BDEW 2025 via demandlib), one year at a time, as arrays.

demandlib builds the profile for a 15-minute DatetimeIndex of the site's local year; we
normalise it to exactly the configured annual energy and keep the array, so a step is
an index lookup. (demandlib's older ElecSlp must never be called: it breaks on pandas 3
and turns warnings into errors process-wide.)
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

QUARTER_S = 900.0


@functools.lru_cache(maxsize=32)
def year_profile(profile: str, year: int, timezone: str) -> tuple[float, np.ndarray]:
    """(epoch of local Jan 1st 00:00, kW per 15 min for 1 kWh per year)."""
    import demandlib.bdew as bdew

    start = pd.Timestamp(year=year, month=1, day=1, tz=timezone)
    end = pd.Timestamp(year=year + 1, month=1, day=1, tz=timezone)
    idx = pd.date_range(start, end, freq="15min", inclusive="left")
    cls = {"H25": bdew.H25, "G25": bdew.G25, "L25": bdew.L25, "P25": bdew.P25,
           "S25": bdew.S25}[profile]
    kw = np.asarray(cls(idx).to_numpy(dtype=float))
    kw = kw / (kw.sum() * QUARTER_S / 3600.0)  # exactly 1 kWh over the year
    kw.setflags(write=False)
    return start.timestamp(), kw


class LoadProfile:
    """Mean power of a profile at any time, scaled to ``annual_kwh``; 'constant' = p_kw."""

    def __init__(self, profile: str, timezone: str, annual_kwh: float = 0.0,
                 p_kw: float = 0.0) -> None:
        self.profile = profile
        self.timezone = timezone
        self.annual_kwh = annual_kwh
        self.p_const_kw = p_kw
        self._start = 0.0
        self._end = -1.0
        self._arr: np.ndarray = np.zeros(1)

    def _load_year(self, t: float) -> None:
        year = pd.Timestamp(t, unit="s", tz="UTC").tz_convert(self.timezone).year
        self._start, self._arr = year_profile(self.profile, year, self.timezone)
        self._end = self._start + len(self._arr) * QUARTER_S

    def p_kw(self, t: float) -> float:
        """Mean power of the quarter hour containing t (BDEW values are quarter means)."""
        if self.profile == "constant":
            return self.p_const_kw
        if not self._start <= t < self._end:
            self._load_year(t)
        return float(self._arr[int((t - self._start) // QUARTER_S)]) * self.annual_kwh

    def p_kw_array(self, ts: np.ndarray) -> np.ndarray:
        """Vectorised ``p_kw`` over epoch seconds (any span of years)."""
        ts = np.asarray(ts, dtype=float)
        if self.profile == "constant":
            return np.full(ts.shape, self.p_const_kw)
        out = np.empty(ts.shape)
        years = pd.DatetimeIndex(pd.to_datetime(ts, unit="s", utc=True)).tz_convert(
            self.timezone).year.to_numpy()
        for year in np.unique(years):
            start, arr = year_profile(self.profile, int(year), self.timezone)
            sel = years == year
            i = ((ts[sel] - start) // QUARTER_S).astype(int).clip(0, len(arr) - 1)
            out[sel] = arr[i] * self.annual_kwh
        return out

    def peak_per_kwh(self, year: int = 2025) -> float:
        """Peak kW of the profile per kWh/year (to size annual energy from a kW rating)."""
        if self.profile == "constant":
            return 0.0
        return float(year_profile(self.profile, year, self.timezone)[1].max())
