"""Per-device anomaly detectors: physics residuals plus an IsolationForest on windows.

Each detector learns what normal looks like from a clean period (``fit``) and reports
``Anomaly`` records on new telemetry (``detect``): device, signal, score (>= 1 means over
the threshold; bigger is worse), a plain explanation and the time. Telemetry is a frame
per device (UTC index, one column per standard point); ``ctx`` holds the site's weather
(``poa_w_m2``, ``temp_air_c``) where a weather station or the simulator gives it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.ensemble import IsolationForest

from gateway.analytics.anomaly_base import Anomaly, Telemetry, daily
from gateway.analytics.anomaly_stuck import STEADY, StuckSignal
from gateway.analytics.anomaly_thermal import BatteryThermal
from gateway.analytics.battery_health import capacity_estimates
from gateway.analytics.site import SiteInfo

__all__ = ["STEADY", "Anomaly", "AnomalyModel", "BatteryThermal", "StuckSignal", "Telemetry",
           "all_detectors"]

PV_GAMMA = -0.0035
PV_DERATE = 0.9 * 0.97


class PvResidual:
    """PV output against the expectation from irradiance, air temperature and rating.

    Only stable-irradiance minutes count (the sensor and the array see the same sky; at a
    cloud edge they do not), so a few steady hours of an overcast day are enough. A day is
    judged by its worst run of ``RUN`` such minutes rather than its median: soiling only
    grows and a string trips at some moment, so the latest state of the day shows first.
    The threshold is the healthy period's own scatter of those runs (``K_SD`` robust
    standard deviations) but never under ``drop``, what a site's irradiance sensor can
    resolve day to day after it is calibrated against the array's healthy output.
    """

    name = "pv_residual"
    RUN = 30  # stable minutes per judged run (half an hour of one-minute samples)
    STABLE = 0.05  # irradiance within 5 % of its 5-sample median: a steady sky
    K_SD = 4.0

    def __init__(self, info: SiteInfo, drop: float = 0.03) -> None:
        # 0.03: a pyranometer or reference cell checked against the array's own healthy
        # output resolves a few per cent day to day (not tuned: the simulated sensor is
        # exact); soiling at 4 %/day passes it within its first day and a half
        self.info, self.drop = info, drop
        self.base: dict[str, tuple[float, float]] = {}  # device -> (median ratio, threshold)

    def _ratio(self, dev: str, df: pd.DataFrame, ctx: pd.DataFrame) -> pd.Series:
        a = next(x for x in self.info.pv if x.device_id == dev)
        poa = ctx["poa_w_m2"].reindex(df.index)
        cell = ctx["temp_air_c"].reindex(df.index) + poa / 800.0 * 25.0
        exp = (a.kwp * poa / 1000.0 * (1 + PV_GAMMA * (cell - 25.0)) * PV_DERATE).clip(
            upper=a.p_rated_kw)
        steady = (poa - poa.rolling(5, center=True, min_periods=5).median()).abs() <= (
            self.STABLE * poa)
        sunny = (poa > 200) & (exp < 0.95 * a.p_rated_kw) & steady  # not clipped
        return (df["p_kw"] / exp)[sunny]

    def _runs(self, r: pd.Series) -> pd.Series:
        return r.rolling(self.RUN, min_periods=self.RUN).median().dropna()

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for a in self.info.pv:
            if a.device_id in tel and "poa_w_m2" in ctx:
                r = self._ratio(a.device_id, tel[a.device_id], ctx)
                if len(r) > self.RUN:
                    med = float(r.median())
                    runs = self._runs(r) / med
                    sd = 1.4826 * float((runs - 1.0).abs().median())
                    self.base[a.device_id] = (med, max(self.drop, self.K_SD * sd))

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out = []
        for dev, (base, thr) in self.base.items():
            runs = self._runs(self._ratio(dev, tel[dev], ctx)) / base
            for day, g in daily(runs, self.info.timezone):
                rel = float(g.min())
                if rel < 1.0 - thr:
                    out.append(Anomaly(dev, "p_kw", (1.0 - rel) / thr,
                                       f"PV output {100 * (1 - rel):.0f}% below what the "
                                       f"irradiance and rating predict on {day} (string or "
                                       f"module degradation, soiling or a tripped string)",
                                       g.idxmin().isoformat(), self.name))
        return out


class CellSpread:
    """Cell voltage spread (max - min) beyond what the pack showed when healthy."""

    name = "cell_spread"

    def __init__(self, info: SiteInfo) -> None:
        self.info = info
        self.limit: dict[str, float] = {}

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev in self.info.bess_ids:
            if dev in tel:
                sp = tel[dev]["cell_v_max_v"] - tel[dev]["cell_v_min_v"]
                self.limit[dev] = max(1.5 * float(sp.quantile(0.999)), 0.02)

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out = []
        for dev, lim in self.limit.items():
            sp = (tel[dev]["cell_v_max_v"] - tel[dev]["cell_v_min_v"]).rolling(10).min()
            for day, g in daily(sp, self.info.timezone):
                worst = float(g.max())
                if worst > lim:
                    out.append(Anomaly(dev, "cell_v_max_v", worst / lim,
                                       f"cell voltages {1000 * worst:.0f} mV apart on {day} "
                                       f"(healthy: under {1000 * lim:.0f} mV): a weak or "
                                       f"unbalanced cell", g.idxmax().isoformat(), self.name))
        return out


class CapacityFade:
    """Capacity from coulomb counting over partial cycles, against the healthy estimate."""

    name = "capacity_fade"

    def __init__(self, info: SiteInfo, drop: float = 0.06) -> None:
        self.info, self.drop = info, drop
        self.base: dict[str, float] = {}

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev in self.info.bess_ids:
            if dev in tel:
                cap = capacity_estimates(tel[dev])
                if len(cap) >= 2:
                    self.base[dev] = float(cap.median())

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out = []
        for dev, base in self.base.items():
            cap = capacity_estimates(tel[dev])
            for ts, c in zip(pd.DatetimeIndex(cap.index), cap.to_numpy(), strict=True):
                rel = float(c) / base
                if rel < 1.0 - self.drop:
                    out.append(Anomaly(dev, "capacity_kwh", (1.0 - rel) / self.drop,
                                       f"usable capacity {c:.1f} kWh by coulomb counting, "
                                       f"{100 * (1 - rel):.0f}% below the healthy {base:.1f} "
                                       f"kWh (capacity fade)", ts.isoformat(), self.name))
        return out


class EvseDelivery:
    """EV charger: power delivered against power commanded while a car can take it."""

    name = "evse_delivery"

    def __init__(self, info: SiteInfo, drop: float = 0.3) -> None:
        self.info, self.drop = info, drop
        self.base: dict[str, float] = {}

    @staticmethod
    def _ratio(df: pd.DataFrame) -> pd.Series:
        cmd = df["p_set_kw"].clip(lower=0.0)
        ok = (df["connected"] > 0.5) & (cmd > 0.5) & (df["ev_soc_pct"] < 75.0) & (
            df["p_kw"] > 0.05)
        return (df["p_kw"] / cmd)[ok]

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev, df in tel.items():
            if {"connected", "p_set_kw", "ev_soc_pct"} <= set(df.columns):
                r = self._ratio(df)
                if len(r) > 30:
                    self.base[dev] = float(r.median())

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out = []
        for dev, base in self.base.items():
            r = self._ratio(tel[dev])
            for day, g in daily(r, self.info.timezone):
                if len(g) < 10:
                    continue
                rel = float(g.median()) / base
                if rel < 1.0 - self.drop:
                    out.append(Anomaly(dev, "p_kw", (1.0 - rel) / self.drop,
                                       f"charger delivered {100 * rel:.0f}% of its usual share "
                                       f"of the commanded power on {day} (lost phase, "
                                       f"contactor or cable fault)", g.idxmin().isoformat(),
                                       self.name))
        return out


class MeterBalance:
    """Grid meter against the sum of the metered devices behind it (drift, wrong CT)."""

    name = "meter_balance"

    def __init__(self, info: SiteInfo, min_kw: float = 0.3) -> None:
        self.info, self.min_kw = info, min_kw
        self.base: tuple[float, float] | None = None

    def _resid(self, tel: Telemetry) -> pd.Series | None:
        m = self.info.grid_meter
        if m is None or m not in tel:
            return None
        idx = tel[m].index
        total = pd.Series(0.0, index=idx)
        for d in self.info.load_ids:
            if d in tel:
                total += tel[d]["p_kw"].reindex(idx).fillna(0.0)
        for d in [a.device_id for a in self.info.pv] + list(self.info.wind_ids) + list(
                self.info.bess_ids):
            if d in tel:
                total -= tel[d]["p_kw"].reindex(idx).fillna(0.0)
        return tel[m]["p_kw"] - total

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        r = self._resid(tel)
        if r is not None and len(r) > 60:
            hourly = r.resample("1h").mean().dropna()
            self.base = (float(hourly.median()),
                         max(self.min_kw, 5.0 * float((hourly - hourly.median()).abs().median())))

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        r = self._resid(tel)
        if r is None or self.base is None or self.info.grid_meter is None:
            return []
        med, thr = self.base
        out = []
        hourly = (r.resample("1h").mean().dropna() - med)
        for day, g in daily(hourly, self.info.timezone):
            run = g.abs().rolling(2).min()  # two hours in a row off
            worst = float(run.max()) if len(run) else 0.0
            if worst > thr:
                out.append(Anomaly(self.info.grid_meter, "p_kw", worst / thr,
                                   f"grid meter differs from the sum of the site's devices by "
                                   f"{worst:.2f} kW on {day} (meter drift or a wrong CT)",
                                   run.idxmax().isoformat(), self.name))
        return out


class WindowForest:
    """IsolationForest per device on hourly windows (mean, std, min, max of each signal)."""

    name = "isolation_forest"

    def __init__(self, info: SiteInfo, n_trees: int = 100, window: str = "1h") -> None:
        self.info, self.n_trees, self.window = info, n_trees, window
        self.models: dict[str, tuple[IsolationForest, list[str], float]] = {}

    def _windows(self, df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        agg = df[cols].resample(self.window).agg(["mean", "std", "min", "max"])
        return agg.dropna()

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev, df in tel.items():
            cols = [c for c in df.columns if df[c].nunique() > 1]
            w = self._windows(df, cols)
            if len(w) < 24 or not cols:
                continue
            model = IsolationForest(n_estimators=self.n_trees, random_state=0)
            model.fit(w.to_numpy())
            scores = model.score_samples(w.to_numpy())
            self.models[dev] = (model, cols, float(scores.min()))

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out = []
        for dev, (model, cols, floor) in self.models.items():
            if dev not in tel:
                continue
            w = self._windows(tel[dev], cols)
            if not len(w):
                continue
            s = pd.Series(model.score_samples(w.to_numpy()), index=w.index)
            margin = 0.05
            bad = (s < floor - margin).astype(int).rolling(3).sum() >= 3  # 3 h in a row
            for day, g in daily(s[bad], self.info.timezone):
                worst = float(g.min())
                out.append(Anomaly(dev, "*", (floor - worst) / margin,
                                   f"telemetry on {day} unlike any hour of the healthy period "
                                   f"(isolation score {worst:.3f} < {floor:.3f})",
                                   g.idxmin().isoformat(), self.name))
        return out


def all_detectors(info: SiteInfo, forest_trees: int = 100) -> list[Any]:
    return [PvResidual(info), BatteryThermal(info), CellSpread(info), CapacityFade(info),
            EvseDelivery(info), MeterBalance(info), StuckSignal(info),
            WindowForest(info, forest_trees)]


class AnomalyModel:
    """All detectors of a site, fitted on a healthy period."""

    def __init__(self, info: SiteInfo, forest_trees: int = 100,
                 detectors: list[Any] | None = None) -> None:
        self.info = info
        self.detectors = detectors if detectors is not None else all_detectors(info,
                                                                                forest_trees)

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> AnomalyModel:
        for d in self.detectors:
            d.fit(tel, ctx)
        return self

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out: list[Anomaly] = []
        for d in self.detectors:
            out.extend(d.detect(tel, ctx))
        return sorted(self._explained(out), key=lambda a: a.ts)

    def _explained(self, found: list[Anomaly]) -> list[Anomaly]:
        """Drop a meter-balance anomaly on a day another device's fault explains it."""
        tz = self.info.timezone

        def day(a: Anomaly) -> object:
            return pd.Timestamp(a.ts).tz_convert(tz).date()

        others = {day(a) for a in found
                  if a.detector not in (MeterBalance.name, WindowForest.name)
                  and a.device != self.info.grid_meter}
        return [a for a in found if not (a.detector == MeterBalance.name and day(a) in others)]
