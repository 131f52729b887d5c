"""Battery health from telemetry: capacity by coulomb counting, resistance from current steps.

Capacity: over each partial cycle (a run of one current sign that moves the SOC by at
least ``min_dsoc_pct``) the charge moved divided by the SOC moved, times the pack
voltage, is the usable capacity in kWh. Resistance: at a current step the voltage jumps
by -R x dI before the SOC can move (dV/dI over one sample). SOH is capacity over the
rated capacity; a straight-line trend over time gives the remaining life to ``eol_pct``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class HealthReport:
    device: str
    capacity_kwh: float | None = None  # latest estimate (median of the last estimates)
    soh_pct: float | None = None
    resistance_mohm: float | None = None
    soh_slope_pct_per_year: float | None = None
    remaining_life_years: float | None = None
    n_cycles: int = 0
    n_steps: int = 0
    capacity_series: list[tuple[str, float]] = field(default_factory=list)  # (ISO time, kWh)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def capacity_estimates(df: pd.DataFrame, min_dsoc_pct: float = 10.0) -> pd.Series:
    """Capacity (kWh) per partial cycle, indexed by its end time. Needs i_dc_a, soc_pct, v_dc_v."""
    i = df["i_dc_a"].to_numpy(dtype=float)
    soc = df["soc_pct"].to_numpy(dtype=float)
    v = df["v_dc_v"].to_numpy(dtype=float)
    t = pd.DatetimeIndex(df.index)
    dt_h = np.diff(t.as_unit("s").asi8.astype(float), prepend=np.nan) / 3600.0
    sign = np.sign(np.where(np.abs(i) > 0.5, i, 0.0))
    out_t: list[pd.Timestamp] = []
    out_v: list[float] = []
    start = 0
    for k in range(1, len(i) + 1):
        if k == len(i) or sign[k] != sign[start]:
            if sign[start] != 0 and k - start > 2:
                seg = slice(start + 1, k)
                ah = float(np.nansum(i[seg] * dt_h[seg]))  # + = discharged
                dsoc = float(soc[start] - soc[k - 1])  # + = discharged
                if abs(dsoc) >= min_dsoc_pct and ah * dsoc > 0:
                    out_t.append(t[k - 1])
                    out_v.append(ah / (dsoc / 100.0) * float(np.nanmean(v[seg])) / 1000.0)
            start = k
    return pd.Series(out_v, index=pd.DatetimeIndex(out_t), dtype=float)


def resistance_estimates(df: pd.DataFrame, min_di_a: float = 5.0) -> pd.Series:
    """Pack resistance (ohm) at each current step of at least ``min_di_a``."""
    i = df["i_dc_a"].to_numpy(dtype=float)
    v = df["v_dc_v"].to_numpy(dtype=float)
    di, dv = np.diff(i), np.diff(v)
    ok = np.abs(di) >= min_di_a
    r = -dv[ok] / di[ok]
    keep = np.isfinite(r) & (r > 0)
    return pd.Series(r[keep], index=pd.DatetimeIndex(df.index[1:][ok][keep]), dtype=float)


def assess(device: str, df: pd.DataFrame, rated_kwh: float, eol_pct: float = 80.0
           ) -> HealthReport:
    """SOH, resistance, trend and remaining-life projection for one battery's telemetry."""
    rep = HealthReport(device)
    cap = capacity_estimates(df)
    res = resistance_estimates(df)
    rep.n_cycles, rep.n_steps = len(cap), len(res)
    if len(res):
        rep.resistance_mohm = float(np.median(res.to_numpy()) * 1000.0)
    if not len(cap):
        return rep
    rep.capacity_series = [(ts.isoformat(), float(v)) for ts, v in
                          zip(pd.DatetimeIndex(cap.index), cap.to_numpy(), strict=True)]
    latest = float(np.median(cap.to_numpy()[-5:]))
    rep.capacity_kwh = latest
    rep.soh_pct = 100.0 * latest / rated_kwh
    if len(cap) >= 4:
        years = (cap.index - cap.index[0]).total_seconds().to_numpy() / (365.25 * 86400.0)
        if years[-1] > 0:
            slope = float(np.polyfit(years, 100.0 * cap.to_numpy() / rated_kwh, 1)[0])
            rep.soh_slope_pct_per_year = slope
            if slope < 0 and rep.soh_pct > eol_pct:
                rep.remaining_life_years = (rep.soh_pct - eol_pct) / -slope
    return rep
