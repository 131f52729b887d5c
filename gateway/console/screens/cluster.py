"""Cluster: etcd members, the leader and its term, each gateway's lease and devices, device
takeovers, the site's stored mode, and whether this gateway is cut off or no one leads.
Reached with ``c`` (it has no number: the nine tabs are full) or ``--screen cluster``."""

from __future__ import annotations

from typing import Any

import urwid

from gateway.console.screens.base import Screen
from gateway.console.widgets import Markup, Table, fmt_value


def _s(v: Any, unit: str = "s") -> str:
    """An age (clocks of two gateways may differ by a little: never shown below 0)."""
    return f"{max(0.0, v):.1f} {unit}" if isinstance(v, int | float) else "-"


class ClusterScreen(Screen):
    name = "cluster"
    title = "Cluster"
    caps = ("cluster_view",)

    def build(self) -> urwid.Widget:
        self.head = urwid.Text("")
        self.state = urwid.Text("")
        self.table = Table("", empty="loading…")
        return urwid.Pile([("pack", self.head), ("pack", self.state),
                           ("pack", urwid.Divider("─")), ("weight", 1, self.table)])

    def refresh(self) -> None:
        v = self.raw("cluster_view")
        _, why = self.answer("cluster_view")
        if not isinstance(v, dict):
            self.head.set_text([("title", "Cluster  "), ("dim", why or "no answer yet")])
            self.state.set_text("")
            self.table.set_rows([], empty=why or "loading…")
            return
        me = v.get("me") or {}
        lead = v.get("leader") or {}
        role = "LEADER" if me.get("is_leader") else "follower"
        self.head.set_text([
            ("title", "Cluster "), ("value", str(v.get("prefix", "?"))),
            ("text", "  this gateway "), ("value", f"{me.get('gateway')} ({role})"),
            ("text", "\nLeader "),
            ("value", f"{lead.get('gateway')} term {lead.get('term')}") if lead else
            ("bad", "none"),
            ("text", f"  for {_s(lead.get('for_s'))}" if lead else ""),
            ("text", "  lease age "), ("value", _s(me.get("lease_age_s"))),
            ("text", f" of {fmt_value(v.get('lease_ttl_s'))} s")])
        part = str(v.get("partition", "?"))
        self.state.set_text([("text", "State "), ("good" if part == "ok" else "alarm", part)]
                            + ([("bad", f"  {v['error']}")] if v.get("error") else []))
        rows: list[tuple[str, Markup]] = [("", ("title", "Members"))]
        for m in v.get("members") or []:
            state: Markup = (("good", f"up  etcd {m.get('version')}  raft leader "
                                      f"{m.get('raft_leader') or '-'}") if m.get("up") else
                             ("bad", f"DOWN {m.get('error', '')}"))
            rows.append((f"m:{m.get('gateway')}", [
                ("text", f"  {m.get('gateway', '?'):<10} {m.get('client_url', ''):<24} "),
                state]))
        rows.append(("", ("title", "Gateways")))
        for g in v.get("gateways") or []:
            health: Markup = (("good", f"alive  lease {fmt_value(g.get('lease_left_s'))} s "
                                       f"left  telemetry {_s(g.get('telemetry_age_s'))} old")
                              if g.get("alive") else ("bad", "GONE (no lease)"))
            rows.append((f"g:{g.get('gateway')}",
                         [("text", f"  {g.get('gateway', '?'):<10} "), health]))
            devs = g.get("devices") or {}
            rows.append((f"d:{g.get('gateway')}", [
                ("dim", "    devices "),
                *[("good" if q == "good" else "bad", f"{dev} {q or '?'}  ")
                  for dev, q in devs.items()]] if devs else [("dim", "    no devices")]))
        owners = v.get("owners") or []
        rows.append(("", ("title", f"Takeovers ({len(owners)})")))
        for o in owners:
            rest = "  ".join(f"{k}={fmt_value(x)}" for k, x in o.items()
                             if k not in ("device", "gateway") and not isinstance(x, dict | list))
            rows.append((f"o:{o.get('device')}", [
                ("text", f"  {o.get('device')} owned by "), ("value", str(o.get("gateway"))),
                ("dim", f"  {rest}")]))
        if not owners:
            rows.append(("", ("dim", "  none (every device is polled by its own gateway)")))
        ctl = v.get("control")
        rows.append(("", ("title", "Site")))
        if isinstance(ctl, dict):
            ovr = ctl.get("overrides") or []
            rows.append(("s:mode", [
                ("text", "  mode "),
                ("good" if ctl.get("mode") == "normal" else "alarm", str(ctl.get("mode"))),
                ("text", " (held by an operator)" if ctl.get("held") else ""),
                ("text", f"  overrides {len(ovr)}  written by {ctl.get('writer')} term "
                         f"{ctl.get('term')}")]))
        else:
            rows.append(("", ("dim", "  no mode stored yet")))
        self.table.set_rows(rows)
