"""Alarms: active and recent alarms with severity, acknowledge; the audit log below."""

from __future__ import annotations

from typing import Any

import urwid

from gateway.console.data import is_active
from gateway.console.dialogs import Detail
from gateway.console.screens.base import Screen, one_line, pick
from gateway.console.widgets import Table, cell, fmt_time, severity_attr

HEADER = f"{'Raised':<10}{'Severity':<10}{'Source':<16}{'State':<9}{'Acked by':<9}Message"
AUDIT_HEADER = f"{'Time':<10}{'User':<16}{'Action':<20}Detail"


class AlarmsScreen(Screen):
    name = "alarms"
    title = "Alarms"
    actions = [("Enter", "detail"), ("a", "acknowledge"), ("Tab", "alarms/audit")]
    caps = ("alarms", "audit")

    def build(self) -> urwid.Widget:
        self.alarms = Table(HEADER, empty="no alarms", wrap="space")
        self.audit = Table(AUDIT_HEADER, empty="no audit entries", wrap="space")
        self.pile = urwid.Pile([
            ("pack", self.alarms.header_widget()), ("weight", 3, self.alarms),
            ("pack", urwid.Divider("─")), ("pack", urwid.Text(("title", "Audit log"))),
            ("pack", self.audit.header_widget()), ("weight", 2, self.audit)])
        self.pile.focus_position = 1
        return self.pile

    def handle(self, key: str) -> bool:
        if key == "tab":
            self.pile.focus_position = 5 if self.pile.focus_position == 1 else 1
            return True
        if key in ("a", "enter") and self.pile.focus_position == 1:
            aid = self.alarms.focus_key()
            if not aid:
                self.ctx.notify("no alarm selected", "error")
            elif key == "enter":
                self.detail(aid)
            else:
                self.acknowledge(aid)
            return True
        return False

    def _record(self, aid: str) -> dict[str, Any] | None:
        recs, _ = self.answer("alarms")
        return next((r for i, r in enumerate(recs or [])
                     if str(pick(r, "key", "id", default=i)) == aid), None)

    def acknowledge(self, aid: str) -> None:
        """Acknowledge once: an alarm already acknowledged is not sent again (that would
        only add a second audit row), the operator is told who did it and when."""
        rec = self._record(aid)
        by = pick(rec, "acked_by") if rec else None
        if by:
            self.ctx.notify(f"alarm {aid} was already acknowledged by {by} at "
                            f"{fmt_time(pick(rec or {}, 'acked_s'))}")
            return
        self.ctx.act("ack", {"key": aid}, f"acknowledge alarm {aid}")

    def detail(self, aid: str) -> None:
        """Every field of one alarm, the message in full."""
        rec = self._record(aid) or {}
        lines: list[Any] = [[("title", "Message  "), ("value", str(pick(rec, "message",
                                                                          "text", default="")))],
                            ""]
        for label, keys in (("Severity", ("severity", "level")), ("Source", ("source",)),
                            ("Condition", ("condition",)), ("Count", ("count",))):
            v = pick(rec, *keys)
            if v is not None:
                lines.append([("text", f"{label:<13}"), ("value", str(v))])
        for label, key in (("Raised", "raised_s"), ("Cleared", "cleared_s"),
                           ("Acknowledged", "acked_s")):
            if pick(rec, key) is not None:
                lines.append([("text", f"{label:<13}"), ("value", fmt_time(rec[key]))])
        lines.append([("text", f"{'State':<13}"),
                      ("value", ("active" if is_active(rec) else "cleared")
                       + (f", acknowledged by {rec['acked_by']}" if rec.get("acked_by")
                          else ", not acknowledged"))])

        def done(answer: Any) -> None:
            self.ctx.close_dialog()
            if answer == "ack":
                self.acknowledge(aid)
        self.ctx.dialog(Detail(f" Alarm {aid} ", lines, done,
                               {"a": ("acknowledge", "ack")}))

    def refresh(self) -> None:
        recs, why = self.answer("alarms")
        if recs is None:
            self.alarms.set_rows([], empty=why or "")
        else:
            rows = []
            for i, r in enumerate(recs):
                aid = str(pick(r, "key", "id", default=i))
                sev = pick(r, "severity", "level", default="?")
                active = is_active(r)
                by = pick(r, "acked_by")
                acked = bool(by or pick(r, "acked", "acked_s", default=False))
                attr = severity_attr(sev) if active else "dim"
                rows.append((aid, [
                    ("text", cell(fmt_time(pick(r, "raised_s", "ts")), 9) + " "),
                    (attr, cell(sev, 9) + " "),
                    ("text", cell(pick(r, "source", "device"), 15) + " "),
                    (attr, cell("active" if active else "cleared", 8) + " "),
                    ("good" if acked else ("alarm" if active else "dim"),
                     cell(by or ("yes" if acked else "no"), 8) + " "),
                    ("text", str(pick(r, "message", "text", default=""))
                     + (f" (x{r['count']})" if (r.get("count") or 1) > 1 else ""))]))
            self.alarms.set_rows(rows)
        recs, why = self.answer("audit")
        if recs is None:
            self.audit.set_rows([], empty=why or "")
        else:
            recs = list(reversed(recs)) if _ascending(recs) else recs
            self.audit.set_rows([(str(i), [
                ("text", cell(fmt_time(pick(r, "ts", "time")), 9) + " "),
                ("value", cell(pick(r, "user", "by"), 15) + " "),
                ("text" if r.get("ok", True) else "bad",
                 cell(pick(r, "action", "cmd"), 19) + " "),
                ("dim" if r.get("ok", True) else "bad", _detail(r))])
                for i, r in enumerate(recs)])


def _detail(r: dict[str, Any]) -> str:
    d = r.get("detail")
    text = one_line(d) if isinstance(d, dict) else str(d or "")
    if r.get("ok") is False:
        text = f"REFUSED: {r.get('reason') or ''}  {text}"
    return text


def _ascending(recs: list[dict[str, Any]]) -> bool:
    ts = [r["ts"] for r in recs if isinstance(r.get("ts"), int | float)]
    return len(ts) > 1 and ts[0] < ts[-1]
