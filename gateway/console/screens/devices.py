"""Devices: a table of every device; Enter shows every point of one with unit and quality,
and its communication statistics."""

from __future__ import annotations

import time
from typing import Any

import urwid

from gateway.console.screens.base import Screen
from gateway.console.widgets import Table, cell, fmt_age, fmt_value, quality_attr

HEADER = f"{'Device':<16}{'Nature':<13}{'Protocol':<12}{'State':<10}{'Quality':<9}" \
         f"{'Last update':<13}{'Errors':>6}"
POINT_HEADER = f"{'Point':<24}{'Value':>14} {'Unit':<7}{'Quality':<9}{'Changed':<12}"


def worst(point_q: str, device_q: object) -> str:
    """A point is no better than its device (staleness is not announced per point)."""
    order = ("good", "stale", "offline")
    if device_q in order and point_q in order and \
            order.index(str(device_q)) > order.index(point_q):
        return str(device_q)
    return point_q


def state_of(dev: dict[str, Any]) -> str:
    pts = dev.get("points", {})
    for key in ("state", "closed", "enabled"):
        if key in pts:
            return fmt_value(pts[key].get("value"))
    return "-"


class DevicesScreen(Screen):
    name = "devices"
    title = "Devices"
    actions = [("Enter", "detail"), ("Esc", "back")]

    def build(self) -> urwid.Widget:
        self.table = Table(HEADER, empty="no devices")
        self.points = Table(POINT_HEADER, empty="no readings yet")
        self.detail_head = urwid.Text("")
        self.comm = urwid.Text("")
        self.selected: str | None = None
        self.list_view: urwid.Frame[Any, Any, Any] = urwid.Frame(
            self.table, header=self.table.header_widget())
        self.detail_view: urwid.Frame[Any, Any, Any] = urwid.Frame(
            self.points, header=urwid.Pile([self.detail_head, self.points.header_widget()]),
            footer=urwid.Pile([urwid.Divider("─"), self.comm]))
        self.holder: urwid.WidgetPlaceholder[Any] = urwid.WidgetPlaceholder(self.list_view)
        return self.holder

    def handle(self, key: str) -> bool:
        if self.selected is None and key == "enter":
            dev = self.table.focus_key()
            if dev:
                self.show(dev)
            return True
        if self.selected is not None and key in ("esc", "backspace", "left"):
            self.selected = None
            self.holder.original_widget = self.list_view
            self.refresh()
            return True
        return False

    def show(self, dev: str) -> None:
        self.selected = dev
        self.holder.original_widget = self.detail_view
        self.refresh()

    def refresh(self) -> None:
        now = time.time()
        devs = self.ctx.data.devices
        if self.selected is None:
            rows = []
            for dev_id in sorted(devs):
                d = devs[dev_id]
                q = d.get("quality", "?")
                rows.append((dev_id, [
                    ("text", cell(dev_id, 15) + " "), ("text", cell(d.get("nature"), 12) + " "),
                    ("text", cell(d.get("protocol"), 11) + " "),
                    ("value", cell(state_of(d), 9) + " "),
                    (quality_attr(q), cell(q, 8) + " "),
                    ("text", cell(fmt_age(d.get("last_ok"), now), 12) + " "),
                    ("bad" if d.get("errors") else "text", cell(d.get("errors", 0), 6, True))]))
            self.table.set_rows(rows)
            return
        d = devs.get(self.selected, {})
        self.detail_head.set_text([
            ("title", f"{self.selected}"),
            ("text", f"  {d.get('nature', '')} via {d.get('protocol', '')} "
                     f"{d.get('endpoint', '')}  "),
            (quality_attr(d.get("quality")), str(d.get("quality", "?"))),
            ("dim", "   Esc: back")])
        rows = []
        for name in sorted(d.get("points", {})):
            p = d["points"][name]
            q = worst(p.get("quality", "?"), d.get("quality"))
            rows.append((name, [
                ("text", cell(name, 23) + " "), ("value", cell(p.get("value"), 14, True) + " "),
                ("text", cell(p.get("unit") or "", 6) + " "), (quality_attr(q), cell(q, 8) + " "),
                ("text", cell(fmt_age(p.get("ts"), now), 12))]))
        self.points.set_rows(rows)
        st = self.ctx.data.stats.get("devices", {}).get(self.selected, {})
        lat = d.get("latency_ms")
        self.comm.set_text([
            ("title", "Comm  "),
            ("text", "requests "), ("value", fmt_value(st.get("requests"))),
            ("text", "  errors "), ("bad" if st.get("errors") else "value",
                                    fmt_value(st.get("errors", d.get("errors")))),
            ("text", "  timeouts "), ("value", fmt_value(st.get("timeouts"))),
            ("text", "  reconnects "), ("value", fmt_value(st.get("reconnects"))),
            ("text", "  latency "), ("value", f"{lat:.1f} ms" if isinstance(lat, int | float)
                                     else "--"),
            ("text", "\n      last error "),
            ("bad" if st.get("last_error") or d.get("last_error") else "dim",
             str(st.get("last_error") or d.get("last_error") or "none"))])
