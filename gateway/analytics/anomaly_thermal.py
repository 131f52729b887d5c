"""Battery cell temperature against a first-order thermal model of the pack.

The cells relax towards ``c0 + c1 |P| + c2 air`` (losses grow with the power moved; the
container air is held in the HVAC band) with one time constant. Fitted on the healthy
period as an output-error model: the model runs free from the first measured temperature
of a window, so it says what the temperature *should* be from the power and the air
alone. A failing fan makes the cells run hotter than that; a stuck or detached sensor
stops following the heat. The window start needs no warm-up (the state starts at the
measurement), which is what kept false alarms off the first hour of every check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gateway.analytics.anomaly_base import Anomaly, Telemetry, daily
from gateway.analytics.site import SiteInfo

HVAC_BAND_C = (10.0, 30.0)  # battery containers are held in this band
TAUS_S = (900.0, 1800.0, 3600.0, 7200.0, 14400.0)  # candidate thermal time constants
RUN = 30  # samples in a row beyond the threshold before it counts


def _inputs(df: pd.DataFrame, ctx: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the first sample, input columns [1, |P|, air])."""
    t = pd.DatetimeIndex(df.index).as_unit("s").asi8.astype(float)
    p = df["p_kw"].abs() if "p_kw" in df else df["i_dc_a"].abs()
    if "temp_air_c" in ctx and len(ctx):
        air = ctx["temp_air_c"].reindex(df.index).ffill().bfill().clip(*HVAC_BAND_C)
    else:
        air = pd.Series(sum(HVAC_BAND_C) / 2.0, index=df.index)
    u = np.column_stack([np.ones(len(df)), p.to_numpy(dtype=float),
                         air.to_numpy(dtype=float)])
    return t - t[0], u


def _filtered(t: np.ndarray, u: np.ndarray, tau_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The free response of each input through 1/(1 + tau s) from a zero state, and the
    decay of the initial state (the model output is decay * T0 + filtered @ coef)."""
    a = np.exp(-np.diff(t, prepend=t[0]) / tau_s)
    out = np.zeros_like(u)
    acc = np.zeros(u.shape[1])
    for k in range(len(t)):
        acc = a[k] * acc + (1.0 - a[k]) * u[k]
        out[k] = acc
    return np.exp(-t / tau_s), out


class BatteryThermal:
    """Cell temperature against what the power moved and the container air explain."""

    name = "battery_thermal"

    def __init__(self, info: SiteInfo, margin_c: float = 3.0) -> None:
        self.info, self.margin_c = info, margin_c
        self.model: dict[str, tuple[float, np.ndarray, float]] = {}  # tau, coef, threshold

    def _predict(self, df: pd.DataFrame, ctx: pd.DataFrame, tau: float,
                 coef: np.ndarray) -> np.ndarray:
        t, u = _inputs(df, ctx)
        decay, f = _filtered(t, u, tau)
        y0 = float(df["cell_temp_max_c"].iloc[0])
        return np.asarray(decay * y0 + f @ coef)

    def fit(self, tel: Telemetry, ctx: pd.DataFrame) -> None:
        for dev in self.info.bess_ids:
            df = tel.get(dev)
            if df is None or len(df) < 4 * RUN:
                continue
            y = df["cell_temp_max_c"].to_numpy(dtype=float)
            t, u = _inputs(df, ctx)
            best: tuple[float, float, np.ndarray] | None = None
            for tau in TAUS_S:
                decay, f = _filtered(t, u, tau)
                coef, *_ = np.linalg.lstsq(f, y - decay * y[0], rcond=None)
                sd = float(np.std(y - decay * y[0] - f @ coef))
                if best is None or sd < best[0]:
                    best = (sd, tau, coef)
            assert best is not None
            sd, tau, coef = best
            self.model[dev] = (tau, coef, max(self.margin_c, 5.0 * sd))

    def detect(self, tel: Telemetry, ctx: pd.DataFrame) -> list[Anomaly]:
        out: list[Anomaly] = []
        for dev, (tau, coef, thr) in self.model.items():
            df = tel.get(dev)
            if df is None or len(df) < RUN:
                continue
            resid = pd.Series(df["cell_temp_max_c"].to_numpy(dtype=float)
                              - self._predict(df, ctx, tau, coef), index=df.index)
            for day, g in daily(resid, self.info.timezone):
                out += self._day(dev, day, g, thr)
        return out

    def _day(self, dev: str, day: Any, g: pd.Series, thr: float) -> list[Anomaly]:
        hot = g.rolling(RUN).min()  # RUN samples in a row above the model
        cold = g.rolling(RUN).max()
        if float(hot.max()) > thr:
            worst = float(hot.max())
            return [Anomaly(dev, "cell_temp_max_c", worst / thr,
                            f"cells {worst:.1f} K hotter than the power and container air "
                            f"explain on {day} (failing fan or cooling, or a hot cell)",
                            pd.Timestamp(str(hot.idxmax())).isoformat(), self.name)]
        if float(cold.min()) < -thr:
            worst = -float(cold.min())
            return [Anomaly(dev, "cell_temp_max_c", worst / thr,
                            f"cell temperature {worst:.1f} K below what the power must "
                            f"cause on {day}: the sensor does not follow the heat (stuck or "
                            f"detached sensor)", pd.Timestamp(str(cold.idxmin())).isoformat(),
                            self.name)]
        return []
