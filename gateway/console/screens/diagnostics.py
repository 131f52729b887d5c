"""Diagnostics: poll latency and errors per device, historian size, API and cluster health."""

from __future__ import annotations

import time
from typing import Any

import urwid

from gateway.console.screens.base import Screen, one_line
from gateway.console.widgets import Table, cell, fmt_value, quality_attr

HEADER = (f"{'Device':<16}{'Quality':<9}{'Latency':>9}{'Polls':>8}{'Requests':>9}"
          f"{'Errors':>7}{'Timeouts':>9}{'Reconn':>7}  Last error")


class DiagnosticsScreen(Screen):
    name = "diagnostics"
    title = "Diagnostics"
    caps = ("cluster",)

    def build(self) -> urwid.Widget:
        self.table = Table(HEADER, empty="no devices")
        self.gateway = urwid.Text("")
        self.cluster = urwid.Text("")
        self._rate = (time.monotonic(), 0)
        self.rate = 0.0
        return urwid.Pile([
            ("pack", self.table.header_widget()), ("weight", 1, self.table),
            ("pack", urwid.Divider("─")), ("pack", self.gateway), ("pack", self.cluster)])

    def refresh(self) -> None:
        d = self.ctx.data
        devs = d.stats.get("devices", {}) if isinstance(d.stats, dict) else {}
        rows = []
        for dev_id in sorted(d.devices):
            dev, st = d.devices[dev_id], devs.get(dev_id, {})
            lat = dev.get("latency_ms")
            q = dev.get("quality", "?")
            rows.append((dev_id, [
                ("text", cell(dev_id, 15) + " "), (quality_attr(q), cell(q, 8) + " "),
                ("value", cell(f"{lat:.1f} ms" if isinstance(lat, int | float) else "--", 9,
                               True)),
                ("text", cell(dev.get("polls"), 8, True)),
                ("text", cell(st.get("requests"), 9, True)),
                ("bad" if st.get("errors") else "text", cell(st.get("errors"), 7, True)),
                ("bad" if st.get("timeouts") else "text", cell(st.get("timeouts"), 9, True)),
                ("text", cell(st.get("reconnects"), 7, True) + "  "),
                ("bad" if st.get("last_error") else "dim", str(st.get("last_error") or "-"))]))
        self.table.set_rows(rows)
        t, n = self._rate
        now = time.monotonic()
        if now - t >= 2.0:
            self.rate = (d.updates - n) / (now - t)
            self._rate = (now, d.updates)
        h: Any = d.stats.get("historian") if isinstance(d.stats, dict) else None
        hist = ("off" if not h else
                f"{fmt_value(h.get('rows_written', h.get('rows')))} rows, "
                f"{_size(h.get('db_bytes', h.get('size_bytes')))}, "
                f"buffered {fmt_value(h.get('buffered'))}")
        up = d.stats.get("uptime_s") if isinstance(d.stats, dict) else None
        self.gateway.set_text([
            ("title", "Gateway "), ("value", f"{d.ping.get('gateway', '?')}"),
            ("text", "  uptime "), ("value", f"{(up or 0) / 60:.1f} min"),
            ("text", "  historian "), ("value", hist),
            ("text", "\nLive updates "), ("value", f"{self.rate:.1f}/s"),
            ("text", f", {d.points_changed} point changes since start   you are "),
            ("value", f"{d.user} ({d.role})")])
        cl = self.raw("cluster")
        _, why = self.answer("cluster")
        self.cluster.set_text([("title", "Cluster "),
                               ("value", one_line(cl)) if isinstance(cl, dict) else
                               ("dim", f"standalone gateway — {why}")])


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "size --"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
