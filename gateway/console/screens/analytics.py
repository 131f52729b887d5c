"""Forecast & analytics: forecasts against actuals, anomalies, battery health."""

from __future__ import annotations

import time
from typing import Any

import urwid

from gateway.console.screens.base import Screen, one_line, pick
from gateway.console.widgets import Table, cell, fmt_time, fmt_value, sparkline

TARGETS = (("load", "load_kw", "Site load"), ("pv", "pv_kw", "PV"), ("wind", "wind_kw", "Wind"))


def series(fc: Any, target: str) -> list[tuple[float, float]]:
    """(ts, kW) points of one target from a forecast answer of any reasonable shape."""
    node = fc.get(target) if isinstance(fc, dict) else None
    if node is None and isinstance(fc, dict):
        node = fc.get("targets", {}).get(target) if isinstance(fc.get("targets"), dict) else None
    if isinstance(node, dict):
        node = node.get("points", node.get("forecast", node.get("values")))
    out = []
    for p in node or []:
        if isinstance(p, dict):
            ts = pick(p, "ts", "time", "t")
            v = pick(p, "kw", "value", "yhat", "p_kw", "mean")
        elif isinstance(p, list | tuple) and len(p) >= 2:
            ts, v = p[0], p[1]
        else:
            continue
        if isinstance(ts, int | float) and isinstance(v, int | float):
            out.append((float(ts), float(v)))
    return out


class AnalyticsScreen(Screen):
    name = "analytics"
    title = "Forecast & analytics"
    caps = ("forecast", "anomalies", "battery_health")

    def build(self) -> urwid.Widget:
        self.forecast = urwid.Text("")
        self.anomalies = Table(f"{'Time':<10}{'Device':<16}{'Signal':<18}{'Score':>6}  Explanation",
                               empty="no anomalies")
        self.health = urwid.Text("")
        return urwid.Pile([
            ("pack", urwid.Text(("title", "Forecast vs actual (next 24 h)"))),
            ("pack", self.forecast), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Anomalies"))), ("pack", self.anomalies.header_widget()),
            ("weight", 1, self.anomalies), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Battery health"))), ("pack", self.health)])

    def refresh(self) -> None:
        now = time.time()
        fc = self.raw("forecast")
        _, why = self.answer("forecast")
        if why:
            self.forecast.set_text(("dim", why))
        else:
            parts: list[Any] = []
            for target, key, label in TARGETS:
                pts = series(fc, target)
                if not pts:
                    continue
                ahead = [(t, v) for t, v in pts if t >= now - 900]
                nxt = min(ahead, key=lambda p: abs(p[0] - now))[1] if ahead else None
                actual = self.ctx.data.summary.get(key)
                shifted = [(t - 86400, v) for t, v in ahead]  # draw the next 24 h
                parts += [("text", f"{label:<10}"), ("text", "forecast "),
                          ("value", f"{fmt_value(nxt):>7} kW"), ("text", "  actual "),
                          ("value", f"{fmt_value(actual):>7} kW  "),
                          ("spark", sparkline(shifted, 30, now, 86400, self.ctx.unicode)), "\n"]
            if not parts and isinstance(fc, dict):
                parts = [("text", one_line(fc))]
            self.forecast.set_text(parts or [("dim", "no forecast yet")])
        recs, why = self.answer("anomalies")
        if recs is None:
            self.anomalies.empty = why or ""
            self.anomalies.set_rows([])
        else:
            self.anomalies.set_rows([(str(pick(r, "id", default=i)), [
                ("text", cell(fmt_time(pick(r, "ts", "time", "raised")), 9) + " "),
                ("text", cell(pick(r, "device", "source"), 15) + " "),
                ("text", cell(pick(r, "signal", "point", "kind"), 17) + " "),
                ("alarm", cell(pick(r, "score"), 6, True) + "  "),
                ("text", str(pick(r, "explanation", "message", "text", default="")))])
                for i, r in enumerate(recs)])
        recs, why = self.answer("battery_health")
        if recs is None:
            self.health.set_text(("dim", why or ""))
        else:
            lines: list[Any] = []
            for r in recs:
                soh = pick(r, "soh_pct", "soh")
                lines += [("text", f"{pick(r, 'device', 'id', default='battery'):<14}"),
                          ("text", "SOH "), ("value", f"{fmt_value(soh)} %  "),
                          ("dim", one_line(r, skip=("device", "id", "soh_pct", "soh"))[:50]),
                          "\n"]
            self.health.set_text(lines or [("dim", "no battery data")])
