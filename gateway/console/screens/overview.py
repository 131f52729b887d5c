"""Overview: power flow with values, direction and the last hour on a shown scale, site
mode, leader, alarms; on a larger screen every device at a glance and the active alarms."""

from __future__ import annotations

import time
from collections.abc import Callable

import urwid

from gateway.console.data import HISTORY_S, is_active
from gateway.console.screens.base import Screen, pick
from gateway.console.widgets import (
    Size,
    Table,
    cell,
    flow_bar,
    fmt_kw,
    quality_attr,
    severity_attr,
    spark_range,
    sparkline,
)
from gateway.summary import KEY_POINTS, mode_text, point_text

MIN_SPAN_KW = 2.0  # a sparkline's scale spans at least this, so 0.1 kW is a low bar
GAP_S = 75.0  # no sample for this long (offline, disconnected) is drawn as a gap

FLOW = [
    ("Grid", "grid_kw", "importing", "exporting"),
    ("PV", "pv_kw", "producing", "consuming"),
    ("Wind", "wind_kw", "producing", "consuming"),
    ("Battery", "battery_kw", "discharging", "charging"),
    ("EV chargers", "ev_kw", "charging EVs", "V2G to site"),
    ("Site load", "load_kw", "consuming", "feeding back"),
]


def direction(v: object, pos: str, neg: str) -> str:
    if not isinstance(v, int | float):
        return "no data"
    if abs(v) < 0.05:
        return "idle"
    return pos if v > 0 else neg


class Spark(urwid.Widget):
    """One line that draws a sparkline as wide as it is given."""

    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self, text_for: Callable[[int], str]) -> None:
        super().__init__()
        self.text_for = text_for

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return 1

    def render(self, size: Size, focus: bool = False) -> urwid.Canvas:
        cols = size[0] if size else 80
        return urwid.Text(("spark", self.text_for(cols)), wrap="clip").render((cols,))

    def changed(self) -> None:
        self._invalidate()


class OverviewScreen(Screen):
    name = "overview"
    title = "Overview"
    caps = ("control_status", "alarms", "cluster")

    def build(self) -> urwid.Widget:
        self.rows: dict[str, urwid.Text] = {}
        self.sparks: dict[str, Spark] = {}
        lines: list[urwid.Widget] = []
        self.window_label = urwid.Text("", align="right")
        lines.append(urwid.Columns([
            (48, urwid.Text(("title", "Power flow       value   direction     -   0   +"))),
            self.window_label]))
        for _, key, _, _ in FLOW:
            self.rows[key] = urwid.Text("", wrap="clip")
            self.sparks[key] = Spark(self._spark_text(key))
            lines.append(urwid.Columns([(48, self.rows[key]), self.sparks[key]],
                                       dividechars=1))
        self.soc = urwid.Text("", wrap="clip")
        self.sparks["battery_soc_pct"] = Spark(self._spark_text("battery_soc_pct"))
        self.status = urwid.Text("")
        self.devices = urwid.Text("")
        lines += [urwid.Columns([(48, self.soc), self.sparks["battery_soc_pct"]],
                                dividechars=1),
                  urwid.Divider("─"), self.status, self.devices]
        # What a larger screen has room for: every device at a glance, the active alarms.
        self.device_table = Table("", empty="no devices")
        self.alarm_table = Table("", empty="no active alarms", wrap="space")
        return urwid.Pile([*[("pack", w) for w in lines],
                           ("weight", 3, self.device_table),
                           ("pack", urwid.Text(("title", "Active alarms"))),
                           ("weight", 2, self.alarm_table)])

    def _fill_tables(self) -> None:
        d = self.ctx.data
        rows = []
        for dev_id in sorted(d.devices):
            dev = d.devices[dev_id]
            q = str(dev.get("quality", "?"))
            pts = dev.get("points", {})
            keys = KEY_POINTS.get(str(dev.get("nature", "")), [])
            vals = "  ".join(point_text(k, pts[k]) for k in keys if k in pts)
            rows.append((dev_id, [(quality_attr(q), cell(q, 7) + " "),
                                  ("text", cell(dev_id, 15) + " "),
                                  ("dim", cell(dev.get("nature"), 12) + " "),
                                  ("value", vals)]))
        self.device_table.set_rows(rows)
        recs, why = self.answer("alarms")
        active = [r for r in recs or [] if is_active(r)]
        self.alarm_table.set_rows(
            [(str(pick(r, "key", default=i)), [
                (severity_attr(pick(r, "severity", default="")),
                 cell(pick(r, "severity", default="?"), 9) + " "),
                ("text", f"{pick(r, 'source', default='?')}: "),
                ("value", str(pick(r, "message", default="")))])
             for i, r in enumerate(active)],
            empty=why if recs is None else "no active alarms")

    def _window(self) -> tuple[float, float]:
        now = time.time()
        firsts = [h[0][0] for h in self.ctx.data.history.values() if h]
        span = now - min(firsts) if firsts else 60.0
        return now, min(HISTORY_S, max(60.0, span))

    def _spark_text(self, key: str) -> Callable[[int], str]:
        def text(width: int) -> str:
            """The scale, then the last hour on it (blank where there was no data)."""
            now, window = self._window()
            samples = list(self.ctx.data.history.get(key, ()))
            if key == "battery_soc_pct":
                lo, hi = 0.0, 100.0
            else:
                lo, hi = spark_range(samples, MIN_SPAN_KW)
            label = f"{lo:.0f}..{hi:.0f} " if hi - lo >= 10 else f"{lo:.1f}..{hi:.1f} "
            label = label.rjust(12)
            if width <= len(label) + 4:
                label = ""
            return label + sparkline(samples, width - len(label), now, window,
                                     self.ctx.unicode, lo, hi, GAP_S)
        return text

    def refresh(self) -> None:
        d = self.ctx.data
        s = d.summary
        scale = max([abs(v) for k, v in s.items() if k.endswith("_kw")
                     and isinstance(v, int | float) and not isinstance(v, bool)] + [1.0])
        for label, key, pos, neg in FLOW:
            v = s.get(key)
            num = v if isinstance(v, int | float) and not isinstance(v, bool) else None
            attr = "value" if num is not None else "dim"
            self.rows[key].set_text([
                ("text", f"{label:<12}"), (attr, fmt_kw(num)), ("text", " "),
                ("text", f"{direction(num, pos, neg):<13}"),
                ("spark", flow_bar(num, scale, 11, self.ctx.unicode))])
            self.sparks[key].changed()
        _, window = self._window()
        self.window_label.set_text(("dim", f"last {window / 60:.0f} min"))
        self.sparks["battery_soc_pct"].changed()
        self._fill_tables()
        soc = s.get("battery_soc_pct")
        self.soc.set_text([("text", f"{'Battery SOC':<12}"),
                           ("value", f"{soc:8.1f} %" if isinstance(soc, int | float)
                            else "      -- %")])
        mode = mode_txt = mode_text(self.raw("control_status"))
        mode_attr = "alarm" if mode and any(w in str(mode).lower() for w in
                                            ("emergency", "stop", "island", "shed")) else "value"
        cl = self.raw("cluster")
        leader = pick(cl, "leader", default=None) if isinstance(cl, dict) else None
        gw = d.ping.get("gateway", "?")
        leader_txt = f"{leader}" if leader else f"standalone ({gw})"
        n = d.alarm_count()
        alarm_txt = ("n/a" if n is None else str(n))
        alarm_attr = "alarm" if n else ("dim" if n is None else "good")
        self.status.set_text([("text", "Site mode "), (mode_attr, mode_txt), ("text", "   Leader "),
                              ("value", leader_txt), ("text", "   Active alarms "),
                              (alarm_attr, alarm_txt)])
        c = s.get("devices", {}) if isinstance(s.get("devices"), dict) else {}
        npts = sum(len(v.get("points", {})) for v in d.devices.values())
        rate = f"{len(d.devices)} devices, {npts} points"
        self.devices.set_text([("text", "Devices   "), ("good", f"{c.get('good', 0)} ok"),
                               ("text", ", "),
                               ("warn" if c.get("stale") else "text", f"{c.get('stale', 0)} stale"),
                               ("text", ", "),
                               ("bad" if c.get("offline") else "text",
                                f"{c.get('offline', 0)} offline"),
                               ("dim", f"   ({rate})")])
