"""Forecast & analytics: forecasts against actuals, anomalies, battery health."""

from __future__ import annotations

import time
from typing import Any

import urwid

from gateway.console.screens.base import Screen, one_line, pick
from gateway.console.widgets import Table, cell, fmt_time, fmt_value, parse_ts, sparkline

TARGETS = {"load": ("load_kw", "Site load"), "pv": ("pv_kw", "PV"), "wind": ("wind_kw", "Wind")}
DAY = 86400.0


def series(node: Any, col: str = "p50") -> list[tuple[float, float]]:
    """(ts, kW) of one forecast target: {"time": [ISO...], "p50": [...], ...}."""
    if not isinstance(node, dict):
        return []
    out = []
    for t, v in zip(node.get("time", []), node.get(col, []), strict=False):
        ts = parse_ts(t) if isinstance(t, str) else t
        if isinstance(ts, int | float) and isinstance(v, int | float):
            out.append((float(ts), float(v)))
    return out


def at(points: list[tuple[float, float]], now: float) -> float | None:
    """The value of the step that contains ``now`` (the last one starting before it, if it
    started within the hour), else the first step when the forecast starts within the hour."""
    before = [p for p in points if p[0] <= now]
    if before and now - before[-1][0] <= 3600:
        return before[-1][1]
    if points and 0 <= points[0][0] - now <= 3600:
        return points[0][1]
    return None


def _score(v: Any) -> Any:
    return f"{v:.2f}" if isinstance(v, float) else v


class AnalyticsScreen(Screen):
    name = "analytics"
    title = "Forecast & analytics"
    actions = [("t", "train forecast now")]
    caps = ("forecast", "anomalies")
    slow_caps = ("battery_health",)

    def build(self) -> urwid.Widget:
        self.forecast = urwid.Text("")
        self.anomalies = Table(f"{'Time':<10}{'Device':<16}{'Signal':<18}{'Score':>6}  "
                               f"Explanation", empty="no anomalies")
        self.health = urwid.Text("")
        return urwid.Pile([
            ("pack", urwid.Text(("title", "Forecast vs actual (p50, p10-p90 band, next 24 h)"))),
            ("pack", self.forecast), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Anomalies"))), ("pack", self.anomalies.header_widget()),
            ("weight", 1, self.anomalies), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Battery health"))), ("pack", self.health)])

    def handle(self, key: str) -> bool:
        if key == "t":
            self.ctx.act("train", {}, "forecast training")
            return True
        return False

    def refresh(self) -> None:
        self._forecast()
        recs, why = self.answer("anomalies")
        if recs is None:
            self.anomalies.set_rows([], empty=why or "")
        else:
            self.anomalies.set_rows([(str(i), [
                ("text", cell(fmt_time(pick(r, "ts", "time")), 9) + " "),
                ("text", cell(pick(r, "device", "source"), 15) + " "),
                ("text", cell(pick(r, "signal", "detector"), 17) + " "),
                ("alarm", cell(_score(pick(r, "score")), 6, True) + "  "),
                ("text", str(pick(r, "explanation", "message", default="")))])
                for i, r in enumerate(reversed(recs))])
        self._health()

    def _forecast(self) -> None:
        fc = self.raw("forecast")
        _, why = self.answer("forecast")
        if why:
            self.forecast.set_text(("dim", why))
            return
        if not isinstance(fc, dict):
            self.forecast.set_text(("dim", "no answer yet"))
            return
        if not fc.get("available"):
            self.forecast.set_text([("warn", "no forecast model yet"),
                                    ("dim", f" ({fc.get('error') or 'not trained'}); "
                                            f"t trains one from the historian")])
            return
        now = time.time()
        parts: list[Any] = []
        models = fc.get("models", {}) if isinstance(fc.get("models"), dict) else {}
        for target, node in (fc.get("forecast") or {}).items():
            key, label = TARGETS.get(target, (f"{target}_kw", target))
            p50 = series(node)
            lo, hi = at(series(node, "p10"), now), at(series(node, "p90"), now)
            actual = self.ctx.data.summary.get(key)
            kind = models.get(target, {}).get("kind", "")
            parts += [("text", f"{label:<10}"), ("text", "fc "),
                      ("value", f"{fmt_value(at(p50, now)):>6}"),
                      ("dim", f" [{fmt_value(lo)}-{fmt_value(hi)}]"), ("text", " actual "),
                      ("value", f"{fmt_value(actual):>6} kW "),
                      ("spark", sparkline([(t - DAY, v) for t, v in p50 if t >= now], 24, now,
                                          DAY, self.ctx.unicode)),
                      ("dim", f" {kind}"), "\n"]
        parts.append(("dim", f"model v{fc.get('version')} trained "
                             f"{fmt_time(fc.get('trained_at'))}"))
        self.forecast.set_text(parts)

    def _health(self) -> None:
        res = self.raw("battery_health")
        _, why = self.answer("battery_health")
        if why:
            self.health.set_text(("dim", why))
            return
        reports = res.get("reports", {}) if isinstance(res, dict) else {}
        lines: list[Any] = []
        for dev in (res or {}).get("batteries", []) if isinstance(res, dict) else []:
            r = reports.get(dev, {})
            if r.get("error"):
                lines += [("text", f"{dev:<14}"), ("dim", str(r["error"])), "\n"]
                continue
            lines += [("text", f"{dev:<14}SOH "), ("value", f"{fmt_value(r.get('soh_pct'))} %"),
                      ("text", "  R "), ("value", f"{fmt_value(r.get('resistance_mohm'))} mΩ"),
                      ("text", "  trend "),
                      ("value", f"{fmt_value(r.get('soh_slope_pct_per_year'))} %/yr"),
                      ("text", "  life "),
                      ("value", f"{fmt_value(r.get('remaining_life_years'))} yr"), "\n"]
        if not lines and isinstance(res, dict):
            lines = [("dim", one_line(res) or "no battery")]
        self.health.set_text(lines or [("dim", "loading…")])
