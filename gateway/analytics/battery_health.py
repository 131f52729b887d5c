"""Battery health from telemetry: capacity from the battery's own energy counters, pack
resistance from current steps, each with its uncertainty, or "not enough data".

Capacity: over each partial cycle (a run of one power sign that moves the SOC by at least
``MIN_DSOC_PCT``) the AC energy the battery's counters moved, divided by the SOC moved.
Charging overstates the cells' capacity by the charge efficiency and discharging
understates it by the discharge efficiency; the geometric mean of the two medians cancels
both when they are alike, with no efficiency to assume. Counters need no clock, so the
estimate does not depend on the gateway's sampling or time base (a simulator running 60x
faster than the wall clock gives the same answer). Resistance: between consecutive polls
the pack voltage moves by -R x dI plus the open-circuit voltage's move with the SOC; both
are fitted together on every step of at least ``MIN_DI_A``. An estimate is shown only with
enough cycles or steps and a 95 % interval within ``MAX_REL_CI`` of it; a report never
reads the battery's own SOH. SOH is the capacity over the rated capacity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MIN_DSOC_PCT = 10.0
MIN_CYCLES = 3  # of each direction
MIN_DI_A = 0.3  # three steps of a 0.1 A current register
MIN_STEPS = 30
MAX_REL_CI = 0.05  # half-width of the 95 % interval, relative
# Added to every interval: what the data cannot show (charge and discharge efficiencies
# that differ, a voltage sensor's gain error).
REL_SYSTEMATIC = 0.01
TREND_DAYS = 60.0  # a SOH trend (and the remaining life) needs this span of estimates
COUNTERS = ("e_charged_kwh", "e_discharged_kwh")


@dataclass
class HealthReport:
    device: str
    capacity_kwh: float | None = None
    capacity_ci_kwh: float | None = None  # 95 % half-width
    soh_pct: float | None = None
    soh_ci_pct: float | None = None
    resistance_mohm: float | None = None
    resistance_ci_mohm: float | None = None
    soh_slope_pct_per_year: float | None = None
    remaining_life_years: float | None = None
    n_cycles: int = 0
    n_steps: int = 0
    capacity_note: str = ""  # why no capacity is shown ("not enough data: ...")
    resistance_note: str = ""
    data_from: str | None = None  # ISO time span the report rests on
    data_to: str | None = None
    capacity_series: list[tuple[str, float]] = field(default_factory=list)  # (ISO time, kWh)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _se_median(x: np.ndarray) -> float:
    """Standard error of a median (normal approximation, robust scale)."""
    mad = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    return 1.2533 * max(mad, 1e-9) / np.sqrt(len(x))


def cycle_capacities(df: pd.DataFrame, min_dsoc_pct: float = MIN_DSOC_PCT) -> pd.DataFrame:
    """Per partial cycle: end time, direction (+1 discharge, -1 charge) and AC kWh per
    100 % SOC from the energy counters. Needs soc_pct, p_kw and both counters."""
    soc = df["soc_pct"].to_numpy(dtype=float)
    p = df["p_kw"].to_numpy(dtype=float)
    e_ch, e_dis = (df[c].to_numpy(dtype=float) for c in COUNTERS)
    sign = np.sign(np.where(np.abs(p) > 0.05, p, 0.0))
    rows: list[tuple[pd.Timestamp, int, float]] = []
    start = 0
    for k in range(1, len(p) + 1):
        if k == len(p) or sign[k] != sign[start]:
            if sign[start] != 0 and k - start > 2:
                a, b = max(start - 1, 0), k - 1  # the sample before the run holds its start
                dsoc = float(soc[a] - soc[b])  # + = discharged
                e = float(e_dis[b] - e_dis[a]) if sign[start] > 0 else -float(e_ch[b] - e_ch[a])
                if abs(dsoc) >= min_dsoc_pct and e * dsoc > 0:
                    rows.append((pd.Timestamp(df.index[b]), int(sign[start]),
                                 e / (dsoc / 100.0)))
            start = k
    return pd.DataFrame(rows, columns=["ts", "direction", "kwh"])

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




def step_resistance(df: pd.DataFrame, min_di_a: float = MIN_DI_A
                    ) -> tuple[float, float, int] | None:
    """(R ohm, 95 % half-width ohm, steps) from consecutive polls: dV = -R dI + k dSOC."""
    i = df["i_dc_a"].to_numpy(dtype=float)
    v = df["v_dc_v"].to_numpy(dtype=float)
    soc = df["soc_pct"].to_numpy(dtype=float)
    di, dv, ds = np.diff(i), np.diff(v), np.diff(soc)
    ok = (np.abs(di) >= min_di_a) & np.isfinite(dv) & (soc[1:] > 15) & (soc[1:] < 90)
    n = int(ok.sum())
    if n < 3:
        return None
    x = np.column_stack([-di[ok], ds[ok]])
    coef, *_ = np.linalg.lstsq(x, dv[ok], rcond=None)
    resid = dv[ok] - x @ coef
    keep = np.abs(resid) <= 4.0 * 1.4826 * max(float(np.median(np.abs(resid))), 1e-6)
    x, y = x[keep], dv[ok][keep]  # one refit without outliers (a poll split by a step)
    if len(y) < 3:
        return None
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = float(np.sum((y - x @ coef) ** 2)) / max(len(y) - 2, 1)
    cov = s2 * np.linalg.pinv(x.T @ x)
    r = float(coef[0])
    return r, float(np.hypot(1.96 * np.sqrt(cov[0, 0]), REL_SYSTEMATIC * r)), len(y)


def assess(device: str, df: pd.DataFrame, rated_kwh: float, eol_pct: float = 80.0
           ) -> HealthReport:
    """Capacity, SOH, resistance (each with a 95 % interval or the reason there is none),
    trend and remaining life for one battery's telemetry (consecutive polls, any clock)."""
    rep = HealthReport(device)
    if len(df) and isinstance(df.index, pd.DatetimeIndex):
        rep.data_from, rep.data_to = df.index[0].isoformat(), df.index[-1].isoformat()
    if {"soc_pct", "p_kw", *COUNTERS} <= set(df.columns):
        _capacity(rep, cycle_capacities(df), rated_kwh, eol_pct)
    else:
        rep.capacity_note = "not enough data: the battery reports no energy counters"
    if {"i_dc_a", "v_dc_v", "soc_pct"} <= set(df.columns):
        r = step_resistance(df)
        rep.n_steps = r[2] if r else 0
        if r is None or r[2] < MIN_STEPS or r[0] <= 0 or r[1] > MAX_REL_CI * r[0]:
            rep.resistance_note = (f"not enough data: {rep.n_steps} of {MIN_STEPS} current "
                                   f"steps" + (f", ±{100 * r[1] / abs(r[0]):.0f} %"
                                               if r and r[0] else ""))
        else:
            rep.resistance_mohm, rep.resistance_ci_mohm = 1000.0 * r[0], 1000.0 * r[1]
    else:
        rep.resistance_note = "not enough data: no DC voltage and current"
    return rep


def _capacity(rep: HealthReport, cyc: pd.DataFrame, rated_kwh: float, eol_pct: float) -> None:
    ch = cyc.loc[cyc["direction"] < 0, "kwh"].to_numpy(dtype=float)
    dis = cyc.loc[cyc["direction"] > 0, "kwh"].to_numpy(dtype=float)
    rep.n_cycles = int(min(len(ch), len(dis)))
    if rep.n_cycles < MIN_CYCLES:
        rep.capacity_note = (f"not enough data: {len(ch)} charge and {len(dis)} discharge "
                             f"cycles over {MIN_DSOC_PCT:.0f} % SOC, {MIN_CYCLES} of each needed")
        return
    mc, md = float(np.median(ch)), float(np.median(dis))
    cap = float(np.sqrt(mc * md))
    rel = float(np.hypot(1.96 * 0.5 * np.hypot(_se_median(ch) / mc, _se_median(dis) / md),
                         REL_SYSTEMATIC))
    if rel > MAX_REL_CI:
        rep.capacity_note = f"not enough data: capacity still uncertain (±{100 * rel:.0f} %)"
        return
    rep.capacity_kwh, rep.capacity_ci_kwh = cap, rel * cap
    rep.soh_pct, rep.soh_ci_pct = 100.0 * cap / rated_kwh, 100.0 * rel * cap / rated_kwh
    # per cycle: each direction's estimate scaled by the ratio between the two medians
    per = np.where(cyc["direction"] > 0, cyc["kwh"] * np.sqrt(mc / md),
                   cyc["kwh"] * np.sqrt(md / mc))
    ts = pd.DatetimeIndex(cyc["ts"])
    rep.capacity_series = [(t.isoformat(), float(v)) for t, v in zip(ts, per, strict=True)]
    days = (ts - ts[0]).total_seconds().to_numpy() / 86400.0
    if days[-1] >= TREND_DAYS:
        slope = float(np.polyfit(days / 365.25, 100.0 * per / rated_kwh, 1)[0])
        rep.soh_slope_pct_per_year = slope
        if slope < 0 and rep.soh_pct > eol_pct:
            rep.remaining_life_years = (rep.soh_pct - eol_pct) / -slope


HEALTH_POINTS = ("soc_pct", "p_kw", "i_dc_a", "v_dc_v", *COUNTERS)


def historian_polls(db_path: Any, device: str, points: tuple[str, ...] = HEALTH_POINTS,
                    since_s: float | None = None) -> pd.DataFrame:
    """One device's points at every poll time the historian holds a change for (each point
    held until its next change), not resampled: the resistance needs consecutive polls."""
    from gateway.analytics.data import device_rows

    rows = device_rows(db_path, device, points, since_s)
    if rows.empty:
        return pd.DataFrame()
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    wide = rows.pivot_table(index="ts", columns="point", values="value", aggfunc="last")
    wide.index = pd.to_datetime(wide.index.to_numpy(dtype=float), unit="s", utc=True)
    return wide.sort_index().ffill().dropna()
