"""Intraday PV, 15 minutes to 6 hours ahead, from the latest measurements.

The clear-sky index (measured PV over the site's clear-sky PV) moves slowly compared with
the sun, so the baseline, clear-sky persistence, holds the index of the last quarter hours
constant and projects it onto the clear-sky curve. The model forecasts the index at the
target quarter directly, per lead time, from what that baseline cannot use: the measured
index over several windows and how much it varies, the day's index so far, the height of
the sun at the target and, with a day-ahead weather forecast, the forecast's index at the
target and its error now (measured minus forecast, over the last quarter, the last hour and
the day so far), which the fit lets decay with the lead. Two models: a linear one per lead
fitted for least absolute PV error, and gradient-boosted trees over all leads (lead as a
feature); the forecast is their blend, with the trees' weight per hour of lead
(``BLEND_STEPS``) and the fitting span chosen on validation weeks; where the blend did not
beat clear-sky persistence there, persistence is used. The index is clipped to [0, KT_MAX].
Each scored week's model is fitted on the weeks before it; test weeks are scored once
(``evaluate``). Weeks interleave (fit, validation, fit, test, ...) so each window spans the
seasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from gateway.analytics import features
from gateway.analytics.data import local_days
from gateway.analytics.site import SiteInfo

LEADS = 24  # quarter hours ahead: 15 min .. 6 h
WINDOWS = (1, 2, 4, 8)  # quarter hours persistence holds the index of (its best is chosen)
MIN_CS_SHARE = 0.03  # an index needs clear-sky PV above this share of its peak (low sun: noise)
KT_MAX = 1.3  # an index above this is a measurement or model error, not sunshine
SPANS_WEEKS = (52,)  # history the model is fitted on (6 weeks lost to 52 on validation)
BLEND_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the trees' weight per hour of lead, chosen
BLEND = "blend"
PERSISTENCE = "clear-sky persistence"
TREE_ROWS = 20_000  # at most this many (origin, lead) rows train the trees (fit in seconds)
MIN_ROWS = 200  # per lead: fewer rows than this fit no model


def _window_sum(v: np.ndarray, w: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(np.nan_to_num(v))])
    out = np.full(len(v), np.nan)
    out[w - 1:] = c[w:] - c[:-w]
    return out


def _index(v: np.ndarray, cs: np.ndarray, w: int, cap: float) -> np.ndarray:
    """``v`` over clear-sky PV, both summed over ``w`` quarters ending at each row; NaN while
    the sun is too low or a quarter of the window is missing (a gap is no measurement)."""
    cs_w = _window_sum(cs, w)
    ok = (cs_w > MIN_CS_SHARE * cap * w) & (_window_sum(np.isnan(v).astype(float), w) == 0)
    return np.clip(np.where(ok, _window_sum(v, w) / np.where(ok, cs_w, 1.0), np.nan),
                   0.0, KT_MAX)


def _cap(cs_kw: np.ndarray) -> float:
    return max(float(np.nanmax(cs_kw)) if len(cs_kw) else 0.0, 1e-6)


def _inputs(pv: np.ndarray, cs: np.ndarray, day: np.ndarray, pv_fc: np.ndarray | None,
            cap: float) -> dict[str, np.ndarray]:
    """Per quarter: the measured index over each of ``WINDOWS`` (``n1`` .. ``n8``, NaN where
    unknown), the same filled from the next shorter window (``f4``), its change over the
    last quarter, its spread over the last 2 h, the day's index so far, the sun's height as
    clear-sky PV over its peak and, from the weather forecast, its index at each quarter
    (``fc``, smoothed over 75 min ``fcs``), over the last hour (``fc4``) and over the day so
    far (``fc_day``)."""
    x = {f"n{w}": _index(pv, cs, w, cap) for w in WINDOWS}
    n1 = x["n1"]
    x["f4"] = np.where(np.isfinite(x["n4"]), x["n4"],
                       np.where(np.isfinite(x["n2"]), x["n2"], n1))
    prev = np.concatenate([[np.nan], n1[:-1]])
    x["slope"] = np.where(np.isfinite(prev), n1 - prev, 0.0)
    x["sd8"] = pd.Series(n1).rolling(8, min_periods=4).std().fillna(0.0).to_numpy()
    up = cs > MIN_CS_SHARE * cap
    cs_day = pd.Series(np.where(up, cs, 0.0)).groupby(day).cumsum().to_numpy()

    def so_far(v: np.ndarray) -> np.ndarray:  # the day's index so far
        d = pd.Series(np.where(up, v, 0.0)).groupby(day).cumsum().to_numpy()
        return np.clip(np.where(cs_day > 0, d / np.maximum(cs_day, 1e-9), np.nan), 0.0, KT_MAX)

    kt_day = so_far(np.nan_to_num(pv))
    x["day"] = np.where(np.isfinite(kt_day), kt_day, n1)
    x["sun"] = cs / cap
    fc = pv_fc if pv_fc is not None else np.full(len(pv), np.nan)
    x["fc"] = np.clip(np.where(up, fc / np.maximum(cs, 1e-9), np.nan), 0.0, KT_MAX)
    x["fcs"] = pd.Series(x["fc"]).rolling(5, center=True, min_periods=1).mean().to_numpy()
    x["fc4"] = _index(fc, cs, 4, cap)
    x["fc_day"] = so_far(fc)
    return x


N_PLAIN = 7  # columns without the weather forecast (the first N_PLAIN of the weather design)


def _design(x: dict[str, np.ndarray], o: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows for origins ``o`` and targets ``t``: without the weather forecast the measured
    index over 15 min and 1 h, the day's so far, its latest change and spread, the sun's
    height at the target and 1; then the forecast's index at the target (as given and
    smoothed), its error now over 15 min, 1 h and the day so far, and its change from now
    to the target (NaN where there is no forecast)."""
    n1, f4, d, ft = x["n1"][o], x["f4"][o], x["day"][o], x["fc"][t]
    return np.column_stack([n1, f4, d, x["slope"][o], x["sd8"][o], x["sun"][t],
                            np.ones(len(o)), ft, x["fcs"][t], n1 - x["fc"][o],
                            f4 - x["fc4"][o], d - x["fc_day"][o], ft - x["fc"][o]])


def _fit_lad(a: np.ndarray, y: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Coefficients minimising the absolute error of ``a @ c`` against ``y`` (the score is
    MAE), by iteratively reweighted least squares from the least-squares start."""
    c = np.zeros(a.shape[1])
    wts = np.ones(len(y))
    for _ in range(rounds):
        sw = np.sqrt(wts)
        c, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        wts = 1.0 / np.maximum(np.abs(y - a @ c), 0.05)
    return np.asarray(c, dtype=float)


@dataclass
class _Part:
    """The model for one case (with or without the weather forecast)."""

    method: str  # BLEND or PERSISTENCE
    coef: np.ndarray | None = None  # (LEADS, columns): the linear model per lead
    trees: HistGradientBoostingRegressor | None = None
    tree_w: np.ndarray | None = None  # (LEADS,): the trees' weight in the blend per lead

    def parts(self, xd: np.ndarray, lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The linear model's and the trees' index at rows ``xd`` ``lead`` quarters ahead."""
        if self.coef is None or self.trees is None:
            raise ValueError("persistence has no fitted models")
        c = self.coef[lead - 1]
        lin = (np.nan_to_num(xd[:, :c.shape[1]]) * c).sum(axis=1)
        cols = int(self.trees.n_features_in_) - 1
        return lin, self.trees.predict(np.column_stack([xd[:, :cols], lead]))

    def kt(self, xd: np.ndarray, lead: np.ndarray, persist: np.ndarray) -> np.ndarray:
        """The index at rows ``xd`` (design columns) ``lead`` quarters ahead."""
        if self.method == PERSISTENCE or self.coef is None or self.trees is None:
            return np.clip(persist, 0.0, KT_MAX)
        lin, trees = self.parts(xd, lead)
        w = self.tree_w[lead - 1] if self.tree_w is not None else 0.5
        return np.clip((1.0 - w) * lin + w * trees, 0.0, KT_MAX)


def _fit_part(xd: np.ndarray, lead: np.ndarray, cs_t: np.ndarray, y_kw: np.ndarray,
              seed: int = 0) -> _Part:
    """Fit both models on rows (design, lead, clear-sky PV and measured PV at the target);
    the blend weights are set by the caller. A lead with too few rows keeps persistence of
    the 15-min index (coefficient 1 on it); too few rows in all: persistence."""
    if len(y_kw) < MIN_ROWS:
        return _Part(PERSISTENCE)
    part = _Part(BLEND)
    coef = np.zeros((LEADS, xd.shape[1]))
    coef[:, 0] = 1.0
    for k in range(1, LEADS + 1):
        m = lead == k
        if m.sum() >= max(MIN_ROWS, 10 * xd.shape[1]):
            coef[k - 1] = _fit_lad(xd[m] * cs_t[m, None], y_kw[m])
    part.coef = coef
    rows = np.arange(len(y_kw))
    if len(rows) > TREE_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, TREE_ROWS, replace=False))
    kt = np.clip(y_kw[rows] / np.maximum(cs_t[rows], 1e-9), 0.0, KT_MAX)
    trees = HistGradientBoostingRegressor(loss="absolute_error", max_iter=100,
                                          learning_rate=0.15, max_leaf_nodes=15,
                                          min_samples_leaf=100, random_state=seed)
    # weighted by the clear-sky PV, the index error is the PV error (the score); one
    # thread: on a shared box OpenMP threads fighting for the cores made it 3x slower
    with threadpool_limits(1):
        trees.fit(np.column_stack([xd[rows], lead[rows]]), kt, sample_weight=cs_t[rows])
    part.trees = trees
    return part


@dataclass
class IntradayModel:
    """Intraday PV with and without a weather forecast (each a method or persistence)."""

    window: int  # quarter hours of the index clear-sky persistence holds
    cap_kw: float  # the clear-sky PV peak the index threshold is a share of
    with_wx: _Part
    plain: _Part

    def describe(self) -> dict[str, object]:
        """For the forecast reply: the method used with and without a weather forecast
        (clear-sky persistence where no method beat it on validation)."""
        def what(p: _Part) -> str:
            if p.method == PERSISTENCE or p.tree_w is None:
                return PERSISTENCE
            return ("blend of a linear and a boosted-trees index model, trees' weight per "
                    "hour of lead " + "/".join(f"{w:g}" for w in p.tree_w[::4]))
        return {"horizon_h": LEADS / 4, "index_window_min": self.window * 15,
                "with_weather": what(self.with_wx), "without_weather": what(self.plain)}

    def predict(self, pv_kw: np.ndarray, cs_kw: np.ndarray, day: np.ndarray,
                pv_fc_kw: np.ndarray | None, origin: int) -> np.ndarray:
        """PV (kW) for quarters origin+1 .. origin+LEADS, from the measurements up to
        ``origin`` (inclusive); ``cs_kw``/``day``/``pv_fc_kw`` cover origin+LEADS too.
        NaN where the index is not known yet (the sun is still too low)."""
        x = _inputs(pv_kw, cs_kw, day, pv_fc_kw, self.cap_kw)
        out = np.full(LEADS, np.nan)
        persist = x[f"n{self.window}"][origin]
        if not (np.isfinite(x["n1"][origin]) and np.isfinite(persist)):
            return out
        t = np.arange(origin + 1, min(origin + LEADS + 1, len(cs_kw)))
        o = np.full(len(t), origin)
        xd = _design(x, o, t)
        lead = t - origin
        use_wx = np.isfinite(xd).all(axis=1)
        kt = np.where(use_wx, self.with_wx.kt(xd, lead, np.full(len(t), persist)),
                      self.plain.kt(xd[:, :N_PLAIN], lead, np.full(len(t), persist)))
        out[:len(t)] = cs_kw[t] * kt
        return out


def persistence(window: int, cap_kw: float) -> IntradayModel:
    """Clear-sky persistence as an IntradayModel: the measured index held constant."""
    return IntradayModel(window, cap_kw, _Part(PERSISTENCE), _Part(PERSISTENCE))


@dataclass
class _Rows:
    """Every (origin, lead) pair whose 15-min origin index and target are known, flat."""

    o: np.ndarray
    lead: np.ndarray
    xd: np.ndarray  # design with weather columns (NaN without a forecast)
    cs_t: np.ndarray
    y: np.ndarray  # measured PV at the target
    persist: dict[int, np.ndarray]  # persistence's index per window (NaN: unknown)

    @property
    def has_wx(self) -> np.ndarray:
        return np.isfinite(self.xd).all(axis=1)

    @property
    def full(self) -> np.ndarray:
        return np.all([np.isfinite(self.persist[w]) for w in WINDOWS], axis=0)

    def design(self, weather: bool) -> np.ndarray:
        return self.xd if weather else self.xd[:, :N_PLAIN]


def _rows(pv: np.ndarray, cs: np.ndarray, day: np.ndarray, pv_fc: np.ndarray | None
          ) -> _Rows:
    x = _inputs(pv, cs, day, pv_fc, _cap(cs))
    n = len(pv)
    os_, ks = [], []
    for k in range(1, LEADS + 1):
        o = np.arange(max(n - k, 0))
        good = np.isfinite(x["n1"][o]) & (cs[o + k] > 0) & np.isfinite(pv[o + k])
        os_.append(o[good])
        ks.append(np.full(int(good.sum()), k))
    o, lead = np.concatenate(os_), np.concatenate(ks)
    t = o + lead
    return _Rows(o, lead, _design(x, o, t), cs[t], pv[t],
                 {w: x[f"n{w}"][o] for w in WINDOWS})


def _fit_on(rows: _Rows, sel: np.ndarray, weather: bool) -> _Part:
    """Both models fitted on the rows ``sel`` whose origin has an index in every window (the
    rows it is scored on; with the weather columns: rows that have them)."""
    m = sel & rows.full & rows.has_wx if weather else sel & rows.full
    xd = rows.design(weather)
    return _fit_part(xd[m], rows.lead[m], rows.cs_t[m], rows.y[m])


def _kw2(part: _Part, rows: _Rows, sel: np.ndarray, weather: bool, window: int = 1
         ) -> np.ndarray:
    """PV (kW) of the linear model and of the trees at rows ``sel`` ((2, rows); both
    persistence of ``window`` where ``part`` is persistence)."""
    xd = rows.design(weather)[sel]
    if part.method == PERSISTENCE:
        p = rows.cs_t[sel] * rows.persist[window][sel]
        return np.vstack([p, p])
    lin, trees = part.parts(xd, rows.lead[sel])
    return rows.cs_t[sel] * np.clip(np.vstack([lin, trees]), 0.0, KT_MAX)


def _mix(kw2: np.ndarray, lead: np.ndarray, tree_w: np.ndarray) -> np.ndarray:
    w = tree_w[lead - 1]
    return (1.0 - w) * kw2[0] + w * kw2[1]


def _choose_weights(kw2: np.ndarray, y: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """The trees' weight per lead: per hour of lead, the step of ``BLEND_STEPS`` with the
    least absolute error on these (validation) rows."""
    out = np.full(LEADS, 0.5)
    for h in range(LEADS // 4):
        m = (lead > 4 * h) & (lead <= 4 * h + 4) & np.isfinite(kw2).all(axis=0)
        if m.any():
            err = [float(np.abs(y[m] - (1 - w) * kw2[0, m] - w * kw2[1, m]).sum())
                   for w in BLEND_STEPS]
            out[4 * h:4 * h + 4] = BLEND_STEPS[int(np.argmin(err))]
    return out


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

    method: str  # chosen on validation (PERSISTENCE when nothing beat it)
    baseline_window: int  # chosen for clear-sky persistence (its strongest window)
    weather: bool
    val_mae: np.ndarray  # (LEADS,)
    val_base: np.ndarray
    test_mae: np.ndarray
    test_base: np.ndarray
    test_pairs: int
    model: IntradayModel
    span_weeks: int = 0  # weeks of history each scored week's model was fitted on
    fell_back: bool = False  # the model lost to persistence on validation: persistence is used
    val_by_method: dict[str, float] | None = None  # 1-3 h validation skill of each candidate

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
        return _skill(m, b, sl)


def _skill(m: np.ndarray, b: np.ndarray, sl: slice = slice(3, 12)) -> float:
    return 100.0 * (1.0 - m[sl].sum() / b[sl].sum())


def _mae_per_lead(rows: _Rows, sel: np.ndarray, pred: np.ndarray) -> np.ndarray:
    err = np.abs(rows.y - pred)
    return np.array([float(err[sel & (rows.lead == k)].mean()) if (sel & (rows.lead == k)).any()
                     else np.nan for k in range(1, LEADS + 1)])


def evaluate(frame: pd.DataFrame, info: SiteInfo, weather: bool = True) -> IntradayResult:
    """Choose the blend weights and the fitting span on validation weeks, score test weeks
    once. Each scored week is forecast by models fitted on the ``span`` weeks before it (as
    the daemon refits on its recent history), never on a test week.

    The model and clear-sky persistence, whatever its window, are scored on the same
    (origin, lead) pairs: daylight targets whose origin has a measured index in every window.
    With ``weather`` the model uses the forecast where it has one (the plain model fitted
    alongside elsewhere), as the daemon does.
    """
    pv, cs, day, pv_fc = _arrays(frame, info)
    return evaluate_series(pv, cs, day, pv_fc if weather else None)


def evaluate_series(pv: np.ndarray, cs: np.ndarray, day: np.ndarray,
                    pv_fc: np.ndarray | None) -> IntradayResult:
    """``evaluate`` on quarter-hourly arrays: measured PV, clear-sky PV, local day number
    and the weather forecast's PV (kW; None: without a weather forecast)."""
    part = split(day)
    week = (day - day.min()) // 7
    val, test = part == 1, part == 2
    if not (val.any() and test.any()):
        raise ValueError(f"intraday evaluation needs 4 weeks of history, found "
                         f"{len(pv) / 96:.1f} days")
    rows = _rows(pv, cs, day, pv_fc)
    wk = week[rows.o]
    common = rows.full & (wk > week.min())  # a scored week needs a week before it to fit on
    on_val, on_test = common & val[rows.o], common & test[rows.o]
    use_wx = pv_fc is not None

    def base(w: int) -> np.ndarray:
        return rows.cs_t * rows.persist[w]

    def rolling(span: int, scored: np.ndarray) -> np.ndarray:
        """PV (kW) of the linear model and the trees ((2, rows), NaN where not scored), each
        scored week fitted on the weeks before it."""
        out = np.full((2, len(rows.y)), np.nan)
        for w_ in np.unique(wk[scored]):
            past = (wk < w_) & (wk >= w_ - span) & ~test[rows.o]
            now = scored & (wk == w_)
            now_wx = now & rows.has_wx if use_wx else np.zeros_like(now)
            if (now & ~now_wx).any():  # rows without a forecast: the plain model
                out[:, now & ~now_wx] = _kw2(_fit_on(rows, past, False), rows,
                                             now & ~now_wx, False)
            if now_wx.any():
                out[:, now_wx] = _kw2(_fit_on(rows, past, True), rows, now_wx, True)
        return out

    base_val = {w: _mae_per_lead(rows, on_val, base(w)) for w in WINDOWS}
    w_b = min(WINDOWS, key=lambda w: float(base_val[w].sum()))
    by_method: dict[str, float] = {}
    cands: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # span: (tree weights, val MAE)
    for sp in SPANS_WEEKS:
        kw2 = rolling(sp, on_val)
        tree_w = _choose_weights(kw2[:, on_val], rows.y[on_val], rows.lead[on_val])
        for name, tw in (("linear", np.zeros(LEADS)), ("boosted", np.ones(LEADS)),
                         (BLEND, tree_w)):
            mae = _mae_per_lead(rows, on_val, _mix(kw2, rows.lead, tw))
            by_method[f"{name} {sp} weeks"] = _skill(mae, base_val[w_b])
        cands[sp] = (tree_w, _mae_per_lead(rows, on_val, _mix(kw2, rows.lead, tree_w)))
    sp = min(cands, key=lambda c: float(cands[c][1].sum()))
    tree_w, val_mae = cands[sp]
    test_base = _mae_per_lead(rows, on_test, base(w_b))
    pairs = int(on_test.sum())
    if val_mae.sum() >= base_val[w_b].sum():  # never a worse model
        return IntradayResult(PERSISTENCE, w_b, use_wx, val_mae, base_val[w_b],
                              test_base.copy(), test_base, pairs,
                              persistence(w_b, _cap(cs)), sp, True, by_method)
    test_mae = _mae_per_lead(rows, on_test, _mix(rolling(sp, on_test), rows.lead, tree_w))
    final = ~test[rows.o] & (wk >= week.max() - sp)
    plain = _fit_on(rows, final, False)
    with_wx = _fit_on(rows, final, True) if use_wx else plain
    for p in (plain, with_wx):
        p.tree_w = tree_w
    return IntradayResult(BLEND, w_b, use_wx, val_mae, base_val[w_b], test_mae, test_base,
                          pairs, IntradayModel(w_b, _cap(cs), with_wx, plain), sp, False,
                          by_method)


def fit(frame: pd.DataFrame, info: SiteInfo) -> IntradayModel:
    """The daemon's model: both models fitted on even weeks and scored on odd ones, with
    and without the weather forecast, which chooses the blend weights; then refit on all
    of ``frame``. Where the blend did not beat clear-sky persistence (its best window) on
    the odd weeks, persistence. Needs two weeks of PV history."""
    return fit_series(*_arrays(frame, info))


def fit_series(pv: np.ndarray, cs: np.ndarray, day: np.ndarray, pv_fc: np.ndarray | None
               ) -> IntradayModel:
    """``fit`` on quarter-hourly arrays (as ``evaluate_series``)."""
    week = (day - day.min()) // 7
    if not (week % 2 == 1).any():
        raise ValueError(f"intraday PV needs 14 days of history, found {len(pv) / 96:.1f}")
    rows = _rows(pv, cs, day, pv_fc)
    wk = week[rows.o]
    train = wk % 2 == 0
    val = (wk % 2 == 1) & rows.full
    err = {w: float(np.abs(rows.y - rows.cs_t * rows.persist[w])[val].sum()) for w in WINDOWS}
    window = min(WINDOWS, key=lambda w: err[w])

    def choose(weather: bool) -> _Part:
        v = val & rows.has_wx if weather else val
        part = _fit_on(rows, train, weather)
        if not v.any() or part.method == PERSISTENCE:
            return _Part(PERSISTENCE)
        kw2 = _kw2(part, rows, v, weather)
        tree_w = _choose_weights(kw2, rows.y[v], rows.lead[v])
        score = float(np.abs(rows.y[v] - _mix(kw2, rows.lead[v], tree_w)).sum())
        if score >= float(np.abs(rows.y - rows.cs_t * rows.persist[window])[v].sum()):
            return _Part(PERSISTENCE)
        final = _fit_on(rows, np.ones(len(rows.y), dtype=bool), weather)
        final.tree_w = tree_w
        return final

    plain = choose(False)  # with no forecast in the history, a forecast adds nothing yet
    return IntradayModel(window, _cap(cs), choose(True) if pv_fc is not None else plain,
                         plain)
