"""Intraday PV, 15 minutes to 6 hours ahead, from the latest measurements.

The clear-sky index (measured PV over the site's clear-sky PV) moves slowly compared with
the sun, so the baseline, clear-sky persistence, holds the index of the last quarter hours
constant and projects it onto the clear-sky curve. The model adds what that baseline
cannot know: per lead time a blend (least absolute error) of the measured index, its change
over the last quarter hour and the day-ahead weather forecast's index for the target
quarter, corrected by the forecast's error so far today; without a weather forecast, a
decay towards the day's index so far.
Each scored week's coefficients are fitted on the weeks before it; the index window and
that span are chosen on validation weeks; test weeks are scored once (``evaluate``).
Weeks interleave (fit, validation, fit, test, ...) so each window spans the seasons.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gateway.analytics import features
from gateway.analytics.data import local_days
from gateway.analytics.site import SiteInfo

LEADS = 24  # quarter hours ahead: 15 min .. 6 h
WINDOWS = (1, 2, 4, 8)  # quarter hours the measured index is taken over (chosen on validation)
MIN_CS_SHARE = 0.03  # an index needs clear-sky PV above this share of its peak (low sun: noise)
KT_MAX = 1.3  # an index above this is a measurement or model error, not sunshine
SPANS_WEEKS = (3, 6, 52)  # history the coefficients are fitted on (chosen on validation)


@dataclass
class IntradayModel:
    """Per lead (1..LEADS quarter hours) the blend coefficients, with and without weather."""

    window: int  # quarter hours of the measured index
    cap_kw: float  # the clear-sky PV peak the index threshold is a share of
    coef_wx: np.ndarray  # (LEADS, 5): see _design
    coef: np.ndarray  # (LEADS, 4)

    def describe(self) -> dict[str, object]:
        """For the forecast reply: the index window and, with and without a weather
        forecast, whether the fitted blend or plain clear-sky persistence is used."""
        def what(c: np.ndarray) -> str:
            return "clear-sky persistence" if (c[:, 0] == 1.0).all() and not c[:, 1:].any() \
                else "fitted blend"
        return {"horizon_h": LEADS / 4, "index_window_min": self.window * 15,
                "with_weather": what(self.coef_wx), "without_weather": what(self.coef)}

    def predict(self, pv_kw: np.ndarray, cs_kw: np.ndarray, day: np.ndarray,
                pv_fc_kw: np.ndarray | None, origin: int) -> np.ndarray:
        """PV (kW) for quarters origin+1 .. origin+LEADS, from the measurements up to
        ``origin`` (inclusive); ``cs_kw``/``day``/``pv_fc_kw`` cover origin+LEADS too.
        NaN where the index is not known yet (the sun is still too low)."""
        x = _inputs(pv_kw, cs_kw, day, pv_fc_kw, self.window, self.cap_kw)
        out = np.full(LEADS, np.nan)
        if not np.isfinite(x["now"][origin]):
            return out
        for k in range(1, LEADS + 1):
            t = origin + k
            if t >= len(cs_kw):
                break
            xw, xn = _design(x, np.array([origin]), np.array([t]))
            use_wx = pv_fc_kw is not None and bool(np.isfinite(xw).all())
            kt = xw[0] @ self.coef_wx[k - 1] if use_wx else xn[0] @ self.coef[k - 1]
            out[k - 1] = cs_kw[t] * float(np.clip(kt, 0.0, KT_MAX))
        return out


def _cap(cs_kw: np.ndarray) -> float:
    return max(float(np.nanmax(cs_kw)) if len(cs_kw) else 0.0, 1e-6)


def _window_sum(v: np.ndarray, w: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(np.nan_to_num(v))])
    out = np.full(len(v), np.nan)
    out[w - 1:] = c[w:] - c[:-w]
    return out


def _inputs(pv: np.ndarray, cs: np.ndarray, day: np.ndarray, pv_fc: np.ndarray | None,
            window: int, cap: float) -> dict[str, np.ndarray]:
    """Per quarter: the measured index over ``window`` quarters ending there, the forecast's
    index there and over the same window, and the measured index of the day so far."""
    cs_w = _window_sum(cs, window)
    ok = cs_w > MIN_CS_SHARE * cap * window
    ok &= _window_sum(np.isnan(pv).astype(float), window) == 0  # a gap is no measurement
    now = np.where(ok, _window_sum(pv, window) / np.where(ok, cs_w, 1.0), np.nan)
    fc = pv_fc if pv_fc is not None else np.full(len(pv), np.nan)
    fc_at = np.where(cs > MIN_CS_SHARE * cap, fc / np.maximum(cs, 1e-9), np.nan)
    fc_win = np.where(ok, _window_sum(fc, window) / np.where(ok, cs_w, 1.0), np.nan)
    fc_win = np.where(_window_sum(np.isnan(fc).astype(float), window) == 0, fc_win,
                      np.nan)  # a window with a missing forecast quarter has none
    up = cs > MIN_CS_SHARE * cap
    c = pd.Series(np.where(up, cs, 0.0))
    cs_day = c.groupby(day).cumsum().to_numpy()

    def so_far(v: np.ndarray) -> np.ndarray:  # the day's index so far
        d = pd.Series(np.where(up, v, 0.0)).groupby(day).cumsum().to_numpy()
        return np.where(cs_day > 0, d / np.maximum(cs_day, 1e-9), np.nan)

    now = np.clip(now, 0.0, KT_MAX)
    kt_day = np.clip(so_far(np.nan_to_num(pv)), 0.0, KT_MAX)
    prev = np.concatenate([[np.nan], now[:-1]])
    return {"now": now, "slope": np.where(np.isfinite(prev), now - prev, 0.0),
            "fc_at": np.clip(fc_at, 0.0, KT_MAX),
            "fc_win": np.clip(fc_win, 0.0, KT_MAX),
            "day": np.where(np.isfinite(kt_day), kt_day, now),
            "fc_day": np.clip(so_far(fc), 0.0, KT_MAX)}


def _design(x: dict[str, np.ndarray], o: np.ndarray, t: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Rows for origins ``o`` and targets ``t``. With the weather forecast: the measured
    index, the forecast's index at the target corrected by the forecast's error over the
    day so far and, separately, over the index window, 1, and the measured index's change
    over the last quarter hour (clouds that are thinning or thickening go on for a while),
    so the blend is fitted per lead time. Without: the measured index, the day's index so
    far, 1 and that change (a decay towards the day's level). Few terms, so a few weeks of
    history fit them."""
    n = len(o)
    fc_t = x["fc_at"][t]
    xw = np.column_stack([x["now"][o], fc_t + x["day"][o] - x["fc_day"][o],
                          fc_t + x["now"][o] - x["fc_win"][o], np.ones(n), x["slope"][o]])
    xn = np.column_stack([x["now"][o], x["day"][o], np.ones(n), x["slope"][o]])
    return xw, xn


@dataclass
class _Rows:
    """Design matrices of every (origin, lead) pair whose origin index and target are known."""

    cap_kw: float
    x_wx: list[np.ndarray] = field(default_factory=list)
    x: list[np.ndarray] = field(default_factory=list)
    cs: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    has_wx: list[np.ndarray] = field(default_factory=list)
    idx: list[np.ndarray] = field(default_factory=list)  # origin rows per lead


def _pairs(pv: np.ndarray, cs: np.ndarray, day: np.ndarray, pv_fc: np.ndarray | None,
           window: int) -> _Rows:
    cap = _cap(cs)
    x = _inputs(pv, cs, day, pv_fc, window, cap)
    n = len(pv)
    rows = _Rows(cap)
    for k in range(1, LEADS + 1):
        o = np.arange(n - k)
        t = o + k
        good = np.isfinite(x["now"][o]) & (cs[t] > 0) & np.isfinite(pv[t]) & np.isfinite(
            x["day"][o])
        o, t = o[good], t[good]
        rows.idx.append(o)
        rows.cs.append(cs[t])
        rows.y.append(pv[t])
        xw, xn = _design(x, o, t)
        rows.x.append(xn)
        rows.x_wx.append(xw)
        rows.has_wx.append(np.isfinite(xw).all(axis=1))
    return rows


def _fit_lead(x: np.ndarray, cs: np.ndarray, y: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Index coefficients minimising the absolute PV error (the score is MAE), by iteratively
    reweighted least squares from the least-squares start; too few rows: persistence."""
    c = np.zeros(x.shape[1])
    c[0] = 1.0
    if len(y) < x.shape[1] * 10:
        return c
    a = x * cs[:, None]
    wts = np.ones(len(y))
    for _ in range(rounds):
        sw = np.sqrt(wts)
        c, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        wts = 1.0 / np.maximum(np.abs(y - a @ c), 0.05)
    return np.asarray(c, dtype=float)


def _fit(rows: _Rows, sel: np.ndarray, window: int) -> IntradayModel:
    cw, c = [], []
    for k in range(LEADS):
        m = sel[rows.idx[k]]
        wx = m & rows.has_wx[k]
        cw.append(_fit_lead(rows.x_wx[k][wx], rows.cs[k][wx], rows.y[k][wx]))
        c.append(_fit_lead(rows.x[k][m], rows.cs[k][m], rows.y[k][m]))
    return IntradayModel(window, rows.cap_kw, np.array(cw), np.array(c))


def _pred(model: IntradayModel, rows: _Rows, k: int, weather: bool) -> np.ndarray:
    use = rows.has_wx[k] if weather else np.zeros(len(rows.y[k]), dtype=bool)
    kt = np.where(use, np.nan_to_num(rows.x_wx[k]) @ model.coef_wx[k], rows.x[k] @ model.coef[k])
    return rows.cs[k] * np.clip(kt, 0.0, KT_MAX)


def _arrays(frame: pd.DataFrame, info: SiteInfo
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    idx = pd.DatetimeIndex(frame.index)
    pv = frame["pv_kw"].to_numpy(dtype=float)
    cs = features.clear_sky_pv(idx, info)
    day = local_days(idx, info.timezone)
    pv_fc = None
    if "ghi_fc_w_m2" in frame and frame["ghi_fc_w_m2"].notna().any():
        wx = frame[[c for c in ("ghi_fc_w_m2", "temp_fc_c") if c in frame]]
        pv_fc = features.weather_features(idx, "pv", info, wx, cs)["pv_phys"]
    return pv, cs, day, pv_fc


def split(day: np.ndarray) -> np.ndarray:
    """Per row: 0 train, 1 validation, 2 test, by interleaved local weeks (t, v, t, test)."""
    week = (day - day.min()) // 7
    return np.select([week % 4 == 1, week % 4 == 3], [1, 2], 0)


@dataclass
class IntradayResult:
    """MAE per lead (kW) of the model and of clear-sky persistence, on validation and test."""

    window: int  # chosen for the model
    baseline_window: int  # chosen for clear-sky persistence (its strongest window)
    weather: bool
    val_mae: np.ndarray  # (LEADS,)
    val_base: np.ndarray
    test_mae: np.ndarray
    test_base: np.ndarray
    test_pairs: int
    model: IntradayModel
    span_weeks: int = 0  # weeks of history each scored week's coefficients were fitted on
    fell_back: bool = False  # the model lost to persistence on validation: persistence is used

    @property
    def note(self) -> str:
        return ("the model did not beat clear-sky persistence on the validation weeks: "
                "persistence is used (test skill 0 by construction)" if self.fell_back else "")

    def skill(self, lead_h: float, test: bool = True) -> float:
        """Skill (%) over clear-sky persistence at ``lead_h`` hours."""
        k = round(lead_h * 4) - 1
        m, b = (self.test_mae, self.test_base) if test else (self.val_mae, self.val_base)
        return 100.0 * (1.0 - m[k] / b[k]) if b[k] > 0 else float("nan")

    def skill_between(self, h0: float, h1: float, test: bool = True) -> float:
        """Skill (%) over persistence on the summed MAE of leads h0..h1 hours."""
        sl = slice(round(h0 * 4) - 1, round(h1 * 4))
        m, b = (self.test_mae, self.test_base) if test else (self.val_mae, self.val_base)
        return 100.0 * (1.0 - m[sl].sum() / b[sl].sum())


def _mae_per_lead(origins: list[np.ndarray], y: list[np.ndarray], sel: np.ndarray,
                  pred: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(LEADS)
    for k in range(LEADS):
        m = sel[origins[k]]
        out[k] = float(np.mean(np.abs(y[k][m] - pred[k][m]))) if m.any() else np.nan
    return out


def evaluate(frame: pd.DataFrame, info: SiteInfo, weather: bool = True) -> IntradayResult:
    """Choose the index window and the fitting span on validation weeks, score test weeks
    once. Each scored week is forecast by coefficients fitted on the ``span`` weeks before
    it (as the daemon refits on its recent history), never on a test week.

    The model and clear-sky persistence, whatever their windows, are scored on the same
    (origin, lead) pairs: daylight targets whose origin has a measured index in every window.
    """
    pv, cs, day, pv_fc = _arrays(frame, info)
    if not weather:
        pv_fc = None
    part = split(day)
    week = (day - day.min()) // 7
    val, test = part == 1, part == 2
    if not (val.any() and test.any()):
        raise ValueError(f"intraday evaluation needs 4 weeks of history, found "
                         f"{len(frame) / 96:.1f} days")
    by_w = {w: _pairs(pv, cs, day, pv_fc, w) for w in WINDOWS}
    common = [functools.reduce(np.intersect1d, [by_w[w].idx[k] for w in WINDOWS])
              for k in range(LEADS)]
    y = [pv[o + k + 1] for k, o in enumerate(common)]

    def on_common(w: int, k: int, v: np.ndarray) -> np.ndarray:
        return v[np.searchsorted(by_w[w].idx[k], common[k])]

    def base_pred(w: int) -> list[np.ndarray]:
        r = by_w[w]
        return [on_common(w, k, r.cs[k] * r.x[k][:, 0]) for k in range(LEADS)]

    def model_pred(w: int, span: int, scored: np.ndarray) -> list[np.ndarray]:
        r = by_w[w]
        out = [np.full(len(r.y[k]), np.nan) for k in range(LEADS)]
        for wk in np.unique(week[scored]):
            past = (week < wk) & (week >= wk - span) & ~test
            if not past.any():
                continue
            m = _fit(r, past, w)
            for k in range(LEADS):
                rows = week[r.idx[k]] == wk
                out[k][rows] = _pred(m, r, k, pv_fc is not None)[rows]
        return [on_common(w, k, out[k]) for k in range(LEADS)]

    first = week > week.min()  # a scored week needs a week before it to fit on
    model_val = {(w, sp): _mae_per_lead(common, y, val & first, model_pred(w, sp, val))
                 for w in WINDOWS for sp in SPANS_WEEKS}
    base_val = {w: _mae_per_lead(common, y, val & first, base_pred(w)) for w in WINDOWS}
    w_m, sp = min(model_val, key=lambda c: float(model_val[c].sum()))
    w_b = min(WINDOWS, key=lambda w: float(base_val[w].sum()))
    test_base = _mae_per_lead(common, y, test & first, base_pred(w_b))
    pairs = int(sum((test & first)[common[k]].sum() for k in range(LEADS)))
    if model_val[(w_m, sp)].sum() >= base_val[w_b].sum():  # never a worse model
        return IntradayResult(w_b, w_b, pv_fc is not None, model_val[(w_m, sp)],
                              base_val[w_b], test_base.copy(), test_base, pairs,
                              persistence(w_b, _cap(cs)), sp, fell_back=True)
    test_mae = _mae_per_lead(common, y, test & first, model_pred(w_m, sp, test))
    final = _fit(by_w[w_m], ~test & (week >= week.max() - sp), w_m)
    return IntradayResult(w_m, w_b, pv_fc is not None, model_val[(w_m, sp)], base_val[w_b],
                          test_mae, test_base, pairs, final, sp)


def persistence(window: int, cap_kw: float) -> IntradayModel:
    """Clear-sky persistence as an IntradayModel: the measured index held constant."""
    cw, c = np.zeros((LEADS, 5)), np.zeros((LEADS, 4))
    cw[:, 0] = c[:, 0] = 1.0
    return IntradayModel(window, cap_kw, cw, c)


def fit(frame: pd.DataFrame, info: SiteInfo) -> IntradayModel:
    """The daemon's model: the window chosen on odd weeks (fitted on even ones), then refit
    on all of ``frame``; where the model (with or without weather) did not beat clear-sky
    persistence on those odd weeks, persistence. Needs two weeks of PV history."""
    pv, cs, day, pv_fc = _arrays(frame, info)
    week = (day - day.min()) // 7
    train, val = week % 2 == 0, week % 2 == 1
    if not val.any():
        raise ValueError(f"intraday PV needs 14 days of history, found {len(frame) / 96:.1f}")
    by_w = {w: _pairs(pv, cs, day, pv_fc, w) for w in WINDOWS}

    def val_mae(w: int, weather: bool, m: IntradayModel | None = None) -> float:
        r = by_w[w]
        m = m or _fit(r, train, w)
        return sum(float(np.abs(r.y[k] - _pred(m, r, k, weather))[val[r.idx[k]]].sum())
                   for k in range(LEADS))

    has_wx = pv_fc is not None
    w = min(WINDOWS, key=lambda w_: val_mae(w_, has_wx))
    model = _fit(by_w[w], np.ones(len(pv), dtype=bool), w)
    base = persistence(w, _cap(cs))
    if val_mae(w, False) >= val_mae(w, False, base):
        model.coef = base.coef
    if has_wx and val_mae(w, True) >= val_mae(w, True, base):
        model.coef_wx = base.coef_wx
    return model
