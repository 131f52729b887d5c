"""Stuck signals: a value that stops changing for longer than it ever did while healthy.

Two kinds of evidence. A *live* measurement (frequency, voltage, temperature, PV power)
wanders on its own: a run of one value longer than twice the longest healthy run is
stuck. A *driven* signal (a battery's SOC) may rest for hours, but not while charge
flows: a run of one SOC value during which the battery moved more energy than a few
percent of its capacity is stuck. A stuck run is reported on every local day it covers,
so a sensor frozen for three days is three days of anomaly, not one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gateway.analytics.anomaly_base import Anomaly, Telemetry
from gateway.analytics.site import SiteInfo

# Counters, estimates, limits and setpoints legitimately hold still for hours.
STEADY = frozenset({"soh_pct", "capacity_kwh", "ev_soc_pct", "p_set_kw",
                    "p_limit_pct", "p_rated_kw", "p_max_kw", "watchdog_s", "p_charge_max_kw",
                    "p_discharge_max_kw", "i_charge_max_a", "i_discharge_max_a", "v_dc_v",
                    "i_dc_a", "cell_v_min_v", "cell_v_max_v", "v_pack_v", "i_pack_a",
                    "ev_energy_req_kwh"})
# Signals that must move when their driver does: signal -> (driver power, share of capacity).
DRIVEN = {"soc_pct": ("p_kw", 0.03)}


def runs(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start index, length and value of each run of equal values."""
    v = s.to_numpy(dtype=float)
    change = np.r_[True, v[1:] != v[:-1]]
    starts = np.flatnonzero(change)
    lens = np.diff(np.r_[starts, len(v)])
    return starts, lens, v[starts]


def _days(idx: pd.DatetimeIndex, tz: str) -> list[tuple[Any, pd.Timestamp]]:
    """(local day, first timestamp of that day) for every day ``idx`` touches."""
    local = pd.Series(idx, index=idx.tz_convert(tz).date)
    return [(d, g.iloc[0]) for d, g in local.groupby(level=0)]


class StuckSignal:
    """Frozen sensors and registers (live measurements and SOC that ignores the current)."""

    name = "stuck_signal"

    def __init__(self, info: SiteInfo, min_run: int = 30) -> None:
        self.info, self.min_run = info, min_run
        self.limits: dict[tuple[str, str], tuple[int, frozenset[float]]] = {}
        self.driven: dict[tuple[str, str], float] = {}  # -> energy (kWh) that must move it

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev, df in tel.items():
            controlled = "p_set_kw" in df.columns  # its power follows a command: flat by design
            for col in df.columns:
                if col in DRIVEN and DRIVEN[col][0] in df.columns and dev in self.info.bess_ids:
                    self.driven[(dev, col)] = DRIVEN[col][1] * self.info.bess_kwh.get(dev, 100.0)
                    continue
                if col.startswith("e_") or col in STEADY or col in DRIVEN or (
                        controlled and col == "p_kw"):
                    continue
                s = df[col].dropna()
                if s.nunique() < 20:  # states, flags, setpoints: steady by nature
                    continue
                _, lens, vals = runs(s)
                rest = frozenset(float(x) for x in vals[lens >= self.min_run])
                other = lens[~np.isin(vals, list(rest))] if rest else lens
                if len(rest) > 2:  # a slow signal (a temperature in 0.1 K steps): it may
                    # hold any value for long, but not for twice its longest healthy hold
                    self.limits[(dev, col)] = (max(self.min_run, 2 * int(lens.max())),
                                               frozenset())
                    continue
                self.limits[(dev, col)] = (max(self.min_run, 2 * int(other.max(initial=1))),
                                           rest)

    def _report(self, dev: str, col: str, s: pd.Series, st: int, ln: int, why: str,
                score: float) -> list[Anomaly]:
        """One anomaly per local day the stuck run covers."""
        span = pd.DatetimeIndex(s.index[st:st + ln])
        return [Anomaly(dev, col, score, f"{col} stayed at {s.iloc[st]:.4g} since "
                        f"{span[0].isoformat()} ({why}): a stuck sensor or frozen register "
                        f"(still stuck on {day})", ts.isoformat(), self.name)
                for day, ts in _days(span, self.info.timezone)]

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out: list[Anomaly] = []
        for (dev, col), (limit, rest) in self.limits.items():
            if dev not in tel or col not in tel[dev]:
                continue
            s = tel[dev][col].dropna()
            for st, ln, val in zip(*runs(s), strict=True):
                if ln > limit and float(val) not in rest:
                    out += self._report(dev, col, s, int(st), int(ln),
                                        f"{ln} samples; healthy: never more than {limit}",
                                        ln / limit)
        for (dev, col), need_kwh in self.driven.items():
            df = tel.get(dev)
            if df is None or col not in df or DRIVEN[col][0] not in df:
                continue
            s = df[col]
            dt_h = np.diff(pd.DatetimeIndex(df.index).as_unit("s").asi8.astype(float),
                           prepend=np.nan) / 3600.0
            moved = np.nan_to_num(np.abs(df[DRIVEN[col][0]].to_numpy(dtype=float)) * dt_h)
            cum = np.r_[0.0, np.cumsum(moved)]
            for st, ln, _ in zip(*runs(s), strict=True):
                kwh = float(cum[st + ln] - cum[st + 1])  # energy moved while it held still
                if kwh > need_kwh:
                    out += self._report(dev, col, s, int(st), int(ln),
                                        f"while {kwh:.1f} kWh went through the battery",
                                        kwh / need_kwh)
        return out
