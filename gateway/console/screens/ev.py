"""EV management: sessions (charger, vehicle, SOC, energy wanted/delivered, departure,
priority class, V2G), change priority or departure, and a fleet view by priority class."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import urwid

from gateway.console import widgets
from gateway.console.dialogs import Choice, Form
from gateway.console.screens.base import Screen, pick
from gateway.console.widgets import Table, cell, fmt_time, fmt_value

PRIORITIES = [("emergency", "emergency vehicle (first)"), ("fleet", "fleet"),
              ("public", "public (last)")]
HEADER = (f"{'Charger':<11}{'Vehicle':<9}{'SOC%':>5}{'Want':>7}{'Got':>7}{'Need':>7}"
          f"  {'Depart':<9}{'Priority':<10}{'V2G':<5}{'kW':>6}")


def parse_departure(text: str, now: dt.datetime | None = None) -> dict[str, float]:
    """'17:30' (today, or tomorrow if past) -> departure_s; '2.5' -> departure_in_h."""
    text = text.strip()
    if ":" in text:
        now = now or dt.datetime.now().astimezone()
        hh, mm = text.split(":", 1)
        t = now.replace(hour=int(hh), minute=int(mm), second=0, microsecond=0)
        if t <= now:
            t += dt.timedelta(days=1)
        return {"departure_s": t.timestamp()}
    return {"departure_in_h": float(text)}


def sessions_of(result: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(active, recent) sessions from the control component's answer."""
    if isinstance(result, dict):
        return list(result.get("active", [])), list(result.get("history", []))
    if isinstance(result, list):
        return [r for r in result if not r.get("ended_s")], \
            [r for r in result if r.get("ended_s")]
    return [], []


class EvScreen(Screen):
    name = "ev"
    title = "EV management"
    actions = [("p", "priority"), ("d", "departure"), ("v", "V2G on/off")]
    caps = ("sessions",)

    def build(self) -> urwid.Widget:
        self.table = Table(HEADER, empty="no cars connected")
        self.fleet = urwid.Text("")
        self.chargers = urwid.Text("", wrap="clip")
        return urwid.Pile([
            ("pack", urwid.Text(("title", "Sessions"))), ("pack", self.table.header_widget()),
            ("weight", 1, self.table), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Fleet"))), ("pack", self.fleet),
            ("pack", self.chargers)])

    def _session(self) -> str | None:
        sid = self.table.focus_key()
        if not sid or sid.startswith("ended:"):
            self.ctx.notify("select an active session first", "error")
            return None
        return sid

    def handle(self, key: str) -> bool:
        if key == "p":
            sid = self._session()
            if sid:
                self.ctx.dialog(Choice(f" Priority at {sid} ", "Charge order by class:",
                                       PRIORITIES, self._setter(sid, "priority")))
            return True
        if key == "d":
            sid = self._session()
            if sid:
                self.ctx.dialog(Form(f" Departure at {sid} ", [("departure", "leaves at", "")],
                                     self._setter(sid, "departure"),
                                     "HH:MM (today, or tomorrow if past) or hours from now."))
            return True
        if key == "v":
            sid = self._session()
            if sid:
                active, _ = sessions_of(self.raw("sessions"))
                rec = next((r for r in active if r.get("charger") == sid), {})
                allowed = bool(rec.get("v2g_allowed"))
                self.ctx.act("ev_set", {"charger": sid, "v2g_allowed": not allowed},
                             f"V2G at {sid} {'off' if allowed else 'on'}")
            return True
        return False

    def _setter(self, sid: str, field: str) -> Callable[[Any], None]:
        def done(answer: Any) -> None:
            self.ctx.close_dialog()
            if not answer:
                return
            if field == "priority":
                self.ctx.act("ev_set", {"charger": sid, "priority": answer},
                             f"priority at {sid} → {answer}")
                return
            try:
                clock = widgets.CLOCK  # "17:30" is on the site's clock, in its zone
                params = parse_departure(answer["departure"],
                                         dt.datetime.fromtimestamp(clock.now(), tz=clock.tz))
            except ValueError:
                self.ctx.notify("departure: give HH:MM or a number of hours", "error")
                return
            self.ctx.act("ev_set", {"charger": sid, **params},
                         f"departure at {sid} → {answer['departure']}")
        return done

    def refresh(self) -> None:
        recs, why = self.answer("sessions")
        devs = self.ctx.data.devices
        classes: dict[str, list[float]] = {}
        if recs is None:
            self.table.set_rows([], empty=why or "")
        else:
            active, recent = sessions_of(self.raw("sessions"))
            rows = []
            for r in active + recent[:5]:
                ended = bool(r.get("ended_s"))
                charger = str(pick(r, "charger", default="?"))
                prio = str(pick(r, "priority", default="?"))
                kw = devs.get(charger, {}).get("points", {}).get("p_kw", {}).get("value")
                want, got = pick(r, "energy_kwh"), pick(r, "delivered_kwh")
                if not ended:
                    c = classes.setdefault(prio, [0, 0.0, 0.0, 0.0])
                    c[0] += 1
                    for j, v in ((1, kw), (2, want), (3, got)):
                        if isinstance(v, int | float):
                            c[j] += float(v)
                v2g = "no" if not r.get("v2g_capable", True) else \
                    ("yes" if r.get("v2g_allowed") else "off")
                base = "dim" if ended else "text"
                rows.append(((f"ended:{charger}:{r.get('ended_s')}" if ended else charger), [
                    (base, cell(charger, 10) + " "),
                    (base, cell(pick(r, "vehicle", default="ended" if ended else "-"), 8) + " "),
                    ("dim" if ended else "value", cell(pick(r, "soc_pct"), 5, True)),
                    ("dim" if ended else "value", cell(want, 7, True)),
                    ("dim" if ended else "value", cell(got, 7, True)),
                    ("dim" if ended else "value", cell(pick(r, "need_kwh"), 7, True) + "  "),
                    (base, cell(fmt_time(pick(r, "departure_s"), site_clock=True), 8) + " "),
                    ("alarm" if prio == "emergency" and not ended else base, cell(prio, 9) + " "),
                    (base, cell(v2g, 4) + " "),
                    ("dim" if ended else "value", cell(None if ended else kw, 6, True))]))
            self.table.set_rows(rows)
        parts: list[Any] = []
        for prio in ("emergency", "fleet", "public"):
            if prio in classes:
                n, kw, want, got = classes[prio]
                parts += [("text", f"{prio:<10} "),
                          ("value", f"{n:.0f} car{'s' if n != 1 else ' '}  {kw:6.1f} kW  "
                                    f"{got:6.1f} of {want:.1f} kWh\n")]
        self.fleet.set_text(parts or [("dim", "no active sessions" if recs is not None else
                                       (why or ""))])
        ch: list[Any] = [("text", "Chargers  ")]
        for dev_id, d in sorted(devs.items()):
            if d.get("nature") == "evse":
                pts = d.get("points", {})
                ch += [("text", f"{dev_id} "),
                       ("value", f"{fmt_value(pts.get('p_kw', {}).get('value'))} kW "
                                 f"{fmt_value(pts.get('state', {}).get('value'))}  ")]
        self.chargers.set_text(ch)
