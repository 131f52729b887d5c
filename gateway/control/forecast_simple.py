"""A simple profile forecast of site load and PV for the scheduler.

Load: the mean of the same local quarter-hour on the same weekday over the past weeks
(any weekday while less than a week is known), blended with the present load over the
first hours; with no history at all, the present load held flat (persistence).
PV: the clear-sky curve (pvlib Haurwitz, no data files) at the site scaled by the
installed peak power and by a ratio learned from what the site produced against clear
sky (recent days), nudged towards today's ratio over the first hours. It stands in until
the analytics forecaster is trained; the scheduler says which one it used.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from gateway.config.models import SiteConfig
from gateway.model import Nature

BIN_S = 900.0
PV_RATIO_DEFAULT = 0.8  # AC output / (kWp x GHI/1000) on a clear day, typical tilted array
NOWCAST_TAU_H = 3.0  # how fast today's deviation fades into the profile
KEEP_DAYS = 28


@dataclass(frozen=True)
class Forecast:
    load_kw: np.ndarray
    pv_kw: np.ndarray
    method: str  # what produced it, for the log and the plan's status


class History:
    """Quarter-hour means of site load and PV (local time), kept for a few weeks."""

    def __init__(self, tz: str, keep_days: int = KEEP_DAYS) -> None:
        self.tz = ZoneInfo(tz)
        self.keep_s = keep_days * 86400.0
        # bin start (epoch) -> [load sum, pv sum, count]
        self._bins: dict[float, list[float]] = {}

    def add(self, t_s: float, load_kw: float | None, pv_kw: float | None) -> None:
        if load_kw is None or not math.isfinite(load_kw):
            return
        key = math.floor(t_s / BIN_S) * BIN_S
        b = self._bins.setdefault(key, [0.0, 0.0, 0.0])
        b[0] += load_kw
        b[1] += pv_kw if pv_kw is not None and math.isfinite(pv_kw) else 0.0
        b[2] += 1.0
        if len(self._bins) % 96 == 0:
            cut = t_s - self.keep_s
            for k in [k for k in self._bins if k < cut]:
                del self._bins[k]

    def __len__(self) -> int:
        return len(self._bins)

    def span_days(self) -> float:
        if not self._bins:
            return 0.0
        return (max(self._bins) - min(self._bins) + BIN_S) / 86400.0

    def means(self) -> dict[float, tuple[float, float]]:
        return {k: (v[0] / v[2], v[1] / v[2]) for k, v in self._bins.items() if v[2] > 0}

    def slot(self, t_s: float) -> tuple[int, int]:
        """(weekday, quarter of the local day) of epoch t_s."""
        d = datetime.fromtimestamp(t_s, self.tz)
        return d.weekday(), (d.hour * 60 + d.minute) // 15


def clear_sky_ghi(lat: float, lon: float, times_s: np.ndarray) -> np.ndarray:
    """Global horizontal irradiance (W/m2) on a clear day at the given epoch seconds."""
    from pvlib.location import Location

    idx = pd.DatetimeIndex(pd.to_datetime(times_s, unit="s", utc=True))
    cs = Location(lat, lon).get_clearsky(idx, model="haurwitz")
    return np.asarray(cs["ghi"].to_numpy(dtype=float), dtype=float)


class SimpleForecaster:
    """Profile forecast from a History; see the module doc."""

    def __init__(self, cfg: SiteConfig, history: History | None = None) -> None:
        site = cfg.site
        self.lat = site.latitude if site.latitude is not None else 52.52
        self.lon = site.longitude if site.longitude is not None else 13.40
        self.history = history if history is not None else History(site.timezone)
        pv = [d for d in cfg.devices if d.enabled and d.nature in (Nature.PV_INVERTER,)]
        self.kwp = sum(d.ratings.kwp or d.ratings.p_max_kw or 0.0 for d in pv)
        self.pv_ac_max_kw = sum(d.ratings.p_max_kw or d.ratings.kwp or 0.0 for d in pv)

    def forecast(self, start_s: float, step_s: float, n: int, now_s: float | None = None,
                 load_now_kw: float | None = None, pv_now_kw: float | None = None
                 ) -> Forecast:
        now = start_s if now_s is None else now_s
        mids = start_s + (np.arange(n) + 0.5) * step_s
        ahead_h = np.maximum(mids - now, 0.0) / 3600.0
        fade = np.exp(-ahead_h / NOWCAST_TAU_H)
        load, lmethod = self._load(mids, fade, load_now_kw)
        pv, pmethod = self._pv(mids, now, fade, pv_now_kw)
        return Forecast(load, pv, f"simple ({lmethod}; {pmethod})")

    # --- load -----------------------------------------------------------------------------
    def _load(self, mids: np.ndarray, fade: np.ndarray, now_kw: float | None
              ) -> tuple[np.ndarray, str]:
        h = self.history
        means = h.means()
        if not means:
            if now_kw is None:
                return np.zeros(len(mids)), "no load data: 0 kW"
            return np.full(len(mids), max(0.0, now_kw)), "load persistence"
        by_week: dict[tuple[int, int], list[float]] = defaultdict(list)
        by_day: dict[int, list[float]] = defaultdict(list)
        for k, (load, _) in means.items():
            wd, q = h.slot(k)
            by_week[(wd, q)].append(load)
            by_day[q].append(load)
        weekly = h.span_days() >= 7.0
        overall = float(np.mean([v[0] for v in means.values()]))
        out = np.empty(len(mids))
        for i, t in enumerate(mids):
            wd, q = h.slot(float(t))
            vals = by_week.get((wd, q)) if weekly else None
            if not vals:
                vals = by_day.get(q)
            out[i] = float(np.mean(vals)) if vals else overall
        method = "same weekday/quarter-hour mean" if weekly else "same quarter-hour mean"
        if now_kw is not None and math.isfinite(now_kw):
            out = out + (now_kw - out[0]) * fade  # today's level, fading into the profile
        return np.maximum(out, 0.0), method

    # --- pv -------------------------------------------------------------------------------
    def _pv(self, mids: np.ndarray, now: float, fade: np.ndarray, now_kw: float | None
            ) -> tuple[np.ndarray, str]:
        if self.kwp <= 0:
            return np.zeros(len(mids)), "no PV"
        ghi = clear_sky_ghi(self.lat, self.lon, mids)
        base = self.kwp * ghi / 1000.0
        ratio, how = self._learned_ratio()
        scale = np.full(len(mids), ratio)
        if now_kw is not None and math.isfinite(now_kw):
            g_now = float(clear_sky_ghi(self.lat, self.lon, np.array([now]))[0])
            if g_now > 100.0:  # sun well up: today's clearness says something
                today = min(max(now_kw / (self.kwp * g_now / 1000.0), 0.0), 1.3)
                scale = ratio + (today - ratio) * fade
                how += ", nowcast"
        pv = np.clip(base * scale, 0.0, self.pv_ac_max_kw or None)
        return pv, f"clear-sky PV x {ratio:.2f} ({how})"

    def _learned_ratio(self) -> tuple[float, str]:
        means = self.history.means()
        if not means:
            return PV_RATIO_DEFAULT, "default ratio"
        keys = np.array(sorted(means))
        recent = keys[keys >= keys[-1] - 3 * 86400.0]
        ghi = clear_sky_ghi(self.lat, self.lon, recent + BIN_S / 2)
        day = ghi > 200.0
        if day.sum() < 8:
            return PV_RATIO_DEFAULT, "default ratio"
        pv = np.array([means[float(k)][1] for k in recent])
        expected = self.kwp * ghi[day] / 1000.0
        ratio = float(np.clip(np.sum(pv[day]) / np.sum(expected), 0.0, 1.3))
        return ratio, "ratio from recent days"
