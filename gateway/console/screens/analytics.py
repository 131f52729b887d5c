"""Forecast & analytics: forecasts against actuals, anomalies, battery health."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import urwid

from gateway.apiclient import ApiRequestError, ApiUnavailable
from gateway.console import caps
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


def training_line(st: Any) -> list[Any]:
    """The latest training's outcome when it is not the model shown (running or failed)."""
    if not isinstance(st, dict) or st.get("state") not in ("running", "failed"):
        return []
    if st["state"] == "running":
        return ["\n", ("warn", "training running…")]
    return ["\n", ("alarm", f"last training failed {fmt_time(st.get('finished_at'))}: "),
            ("text", str(st.get("error", "")))]


def _pm(v: Any, ci: Any, unit: str) -> str:
    return f"{fmt_value(v)} ± {fmt_value(ci)} {unit}"


def health_parts(r: dict[str, Any]) -> list[Any]:
    """SOH and resistance with their 95 % intervals, or why there is no number yet."""
    out: list[Any] = []
    if r.get("soh_pct") is not None:
        out += [("text", "SOH "), ("value", _pm(r["soh_pct"], r.get("soh_ci_pct"), "%")),
                ("dim", f" ({fmt_value(r.get('capacity_kwh'))} kWh, {r.get('n_cycles')} "
                        f"cycles)")]
    else:
        out += [("text", "SOH "), ("dim", str(r.get("capacity_note") or "not enough data"))]
    if r.get("resistance_mohm") is not None:
        out += [("text", "  R "),
                ("value", _pm(r["resistance_mohm"], r.get("resistance_ci_mohm"), "mΩ"))]
    else:
        out += [("text", "  R "),
                ("dim", str(r.get("resistance_note") or "not enough data"))]
    if r.get("soh_slope_pct_per_year") is not None:
        out += [("text", "  trend "),
                ("value", f"{fmt_value(r['soh_slope_pct_per_year'])} %/yr"),
                ("text", "  life "), ("value", f"{fmt_value(r.get('remaining_life_years'))} yr")]
    return out


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
            if self.ctx.may("train"):
                self.ctx.notify("forecast training: sending…")
                self.ctx.spawn(self._train(), "console training")
            return True
        return False

    async def _train(self) -> None:
        """Start a training, then say how it ended: failed (with the reason) or the version
        it made. The gateway trains in the background; its status says when it is done."""
        cmds = self.ctx.data.commands
        train, status = caps.resolve("train", cmds), caps.resolve("training_status", cmds)
        if train is None:
            return
        try:
            r = await self.ctx.call(train)
            st = r.get("training", {}) if isinstance(r, dict) else {}
            if status is None:
                self.ctx.notify("forecast training started (this gateway does not report "
                                "how it ends)")
                return
            run = st.get("run")
            self.ctx.notify("forecast training running…" if r.get("started") else
                            "a forecast training is running already; waiting for it")
            while st.get("run") == run and st.get("state") == "running":
                await asyncio.sleep(0.5)
                st = await self.ctx.call(status)
        except ApiRequestError as exc:
            self.ctx.notify(f"Refused by the gateway: {exc}", "error")
            return
        except ApiUnavailable as exc:
            self.ctx.notify(f"forecast training: {exc}", "error")
            return
        if st.get("state") == "failed":
            self.ctx.notify(f"Forecast training FAILED: {st.get('error')}"
                            + (f" ({st['kept']})" if st.get("kept") else ""), "error")
        elif st.get("state") == "succeeded":
            self.ctx.notify(f"Done: forecast model v{st.get('version')} trained")
        else:
            self.ctx.notify(f"forecast training: {st.get('state', 'state unknown')}")
        self.ctx.refresh(force=True)

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
                                            f"t trains one from the historian"),
                                    *training_line(fc.get("training"))])
            return
        parts_training = training_line(fc.get("training"))
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
        parts += parts_training
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
            lines += [("text", f"{dev:<14}"), *health_parts(r), "\n"]
        if not lines and isinstance(res, dict):
            lines = [("dim", one_line(res) or "no battery")]
        self.health.set_text(lines or [("dim", "loading…")])
